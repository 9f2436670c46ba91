"""docs/results.md: findings computed in Python (report.py), worded by the jinja2 templates."""
from __future__ import annotations

import pytest

from instructedit.evaluate import report
from instructedit.evaluate.report import (
    gain_size,
    instruction_findings,
    section_instructions,
    section_scaling,
    section_table3,
    section_user,
    table3_findings,
    user_findings,
)
from instructedit.evaluate.results import EVAL_TASKS, Outcome, ResultsConfig, ResultsData, RunSpec


def outcome(method: str, task: str, **summary) -> Outcome:
    return Outcome(RunSpec(method, task, "ck"), summary)


def grid(method: str, tasks=EVAL_TASKS, **summary) -> dict:
    return {task: outcome(method, task, **summary) for task in tasks}


def results(**fields) -> ResultsData:
    env = {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 1, "gpu": None, "python": "3.11",
           "torch": "2", "transformers": "5", "model_parameters": 135_000_000}
    return ResultsData(config=ResultsConfig(model="tiny"), environment=env, started="2025-01-01 10:00 UTC",
                       finished="2025-01-01 12:00 UTC", **fields)


def table3(ie_rel: float, mend_rel: float, zsre_ie: float = 0.5) -> dict:
    g = {"Unedited": grid("Unedited", reliability=0.2, locality=1.0, sentiment_success=0.6),
         "Gradient step": grid("Gradient step", reliability=0.9, locality=0.1),
         "MEND multi-task": grid("MEND multi-task", reliability=mend_rel, generalization=0.4, locality=0.9),
         "InstructEdit": grid("InstructEdit", reliability=ie_rel, generalization=0.5, locality=0.8,
                              sentiment_success=0.7)}
    g["InstructEdit"]["zsre"].summary["reliability"] = zsre_ie
    return g


def test_gain_size_against_the_papers_gain():
    assert gain_size(None) is None and gain_size(0.0) is None and gain_size(-3.0) is None
    assert gain_size(report.PAPER_GAIN) == "as-large"
    assert gain_size(report.PAPER_GAIN / 2) == "same-order"
    assert gain_size(1.0) == "much-smaller"


def test_table3_winner_margin_and_sentence():
    data = results(table3=table3(ie_rel=0.8, mend_rel=0.6, zsre_ie=0.7), step_size=0.01)
    f = table3_findings(data)
    assert f.available and f.headline.reproduces and f.headline.size == "as-large"
    assert f.headline.reliability.points == pytest.approx(20.0)
    assert f.holdout.instructedit_better and f.holdout.reliability.points == pytest.approx(10.0)
    assert [name for name, _ in f.against_step.ranked][0] == "InstructEdit"
    assert f.against_step.training_pays_off
    assert f.steering.unedited_steered and f.steering.success.points == pytest.approx(10.0)
    assert f.floor == pytest.approx(0.2)
    text = section_table3(data)
    assert ("InstructEdit reaches 80.0 and multi-task MEND 60.0: +20.0 points for instructions, a gain as "
            "large as the paper's (+14.86). The paper's headline claim reproduces in kind.") in text
    assert "InstructEdit is better on the task it never saw, as in the paper." in text
    assert "; meta-training pays off." in text


def test_table3_not_reproduced_gives_the_reasons():
    data = results(table3=table3(ie_rel=0.5, mend_rel=0.6, zsre_ie=0.4), step_size=0.01)
    data.editors = {"InstructEdit": {"path": "a", "steps": 300}, "MEND multi-task": {"path": "b", "steps": 500}}
    f = table3_findings(data)
    assert not f.headline.reproduces and f.headline.reliability.points == pytest.approx(-10.0)
    assert not f.holdout.instructedit_better
    assert f.reasons.steps == (300, 500) and not f.reasons.near_ceiling
    text = section_table3(data)
    assert "(-10.0 points). **The paper's headline gain (+14.86 points) does not reproduce here.**" in text
    assert "(`tiny`, 135M parameters)" in text and "meta-trained for 300–500 steps" in text
    assert "**the paper's hold-out advantage does not reproduce here**" in text
    assert "- The trained editors were not available" in section_table3(results(table3={}))


def test_instruction_findings_band_and_largest_gap():
    seen = grid("InstructEdit", reliability=0.8)
    held = grid("InstructEdit", reliability=0.78)
    held["zsre"].summary["reliability"] = 0.7
    data = results(instructions={"seen": seen, "held-out": held})
    f = instruction_findings(data)
    assert f.unseen_close and [m.mode for m in f.modes] == ["held-out"]
    assert f.largest.task == "zsre" and f.largest.gap == pytest.approx(-10.0)
    text = section_instructions(data)
    assert "Unseen instructions score within 5 points of seen ones, as the paper reports." in text
    assert "The largest single gap is on" in text and "(-10.0 points of reliability)" in text


def test_user_goals_and_protocol_verdicts():
    ie = grid("InstructEdit", ("counterfact", "recent", "zsre"), reliability=0.9, plain_reliability=0.97,
              generation_success=0.5, neighbourhood_score=0.8)
    mend = grid("MEND multi-task", ("counterfact", "recent", "zsre"), reliability=0.8, plain_reliability=0.99)
    data = results(user={"InstructEdit": ie, "MEND multi-task": mend,
                         "Unedited": {"counterfact": outcome("Unedited", "counterfact", neighbourhood_score=0.82)}})
    f = user_findings(data)
    assert [c.key for c in f.met] == ["plain_reliability", "neighbourhood_score"]
    assert [c.key for c in f.missed] == ["generation_success"]
    assert {p.holds for p in f.protocols} == {"paper"}
    assert f.protocols[0].paper == pytest.approx(10.0) and f.protocols[0].plain == pytest.approx(-2.0)
    text = section_user(data)
    assert ("- InstructEdit on CounterFact meets 2 of 3 goals: Plain rel. 97.0 (goal >= 95.0); NS 80.0 vs "
            "82.0 unedited (goal: within 5.0 points). Missed: Gen. success 50.0 (goal >= 90.0).") in text
    assert "the instruction editor's advantage holds under the paper's protocol only." in text


def test_templates_read_as_joined_lines():
    data = results(scaling_note="skipped: no editors")
    assert section_scaling(data) == "## 5. Task scaling (Fig. 2b/2c in kind)\n\nSkipped: no editors.\n"
