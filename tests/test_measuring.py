"""One measuring contract: the CLI's ``edit --json`` and the studio measure the same edit alike."""
from __future__ import annotations

import json

import pytest

from instructedit.editing.editor import EditRequest
from instructedit.editing.editors import GRADIENT, load_editor
from instructedit.measuring.probing import ProbeResult
from instructedit.measuring.single import mean_known
from instructedit.measuring.verdicts import SAME_ANSWER
from instructedit.model.backbone import load_backbone
from instructedit.web.config import Limits
from instructedit.web.service import EditService
from tests.cli_helpers import run_main

PROMPT = "The Eiffel Tower is located in"
TARGET = "Rome"
REPHRASES = ("Where is the Eiffel Tower? It is in", "The Eiffel Tower stands in")
PROBES = ("Berlin is in", "The capital of Japan is")
TOKENS = 4


def _continuation(result: ProbeResult) -> dict:
    return {"pre": result.before, "post": result.after, "verdict": result.verdict,
            "changed": result.verdict != SAME_ANSWER}


def _target_scores(result: ProbeResult) -> dict:
    return {"pre": {"probability": result.p_target_before, "token_accuracy": result.target_accuracy_before},
            "post": {"probability": result.p_target_after, "token_accuracy": result.target_accuracy}}


@pytest.mark.parametrize("task", ["custom", "counterfact"])
def test_cli_edit_json_and_the_studio_measure_an_edit_alike(capsys, tmp_path, tiny_llama_dir, task):
    args = ["edit", "--model", str(tiny_llama_dir), "--device", "cpu", "--editor", "none",
            "--step-size", "1", "--task", task, "--prompt", PROMPT, "--target", TARGET,
            "--max-new-tokens", str(TOKENS), "--json"]
    for rephrase in REPHRASES:
        args += ["--rephrase", rephrase]
    for probe in PROBES:
        args += ["--probe", probe]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    cli = json.loads(out)

    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    editor = load_editor(GRADIENT, backbone, step_size=1.0)
    service = EditService(backbone, editor, None, Limits(max_new_tokens=TOKENS), export_dir=tmp_path)
    request = EditRequest(prompt=PROMPT, target=TARGET, task=task, instruction=0 if task != "custom" else None,
                          rephrases=REPHRASES, probes=PROBES)
    studio = service.edit("s", request).report

    assert cli["wrapped_input"] == studio.model_input
    assert cli["continuation"] == _continuation(studio.prompt)
    assert cli["wrapped_continuation"] == _continuation(studio.wrapped)
    # the same numbers to the last digit (JSON keeps a float's repr)
    assert cli["target_scores"] == {"wrapped": _target_scores(studio.wrapped),
                                    "raw": _target_scores(studio.prompt)}
    assert cli["scores"] == studio.scores.to_dict()
    assert [r["prompt"] for r in cli["rephrases"]] == list(REPHRASES)
    for item, typed, wrapped in zip(cli["rephrases"], studio.rephrases, studio.wrapped_rephrases, strict=True):
        assert item["wrapped"] == wrapped.prompt
        assert {k: item[k] for k in ("pre", "post", "verdict", "changed")} == _continuation(wrapped)
        assert item["as_typed"] == _continuation(typed)
    assert [p["prompt"] for p in cli["probes"]] == list(PROBES)
    for item, probe in zip(cli["probes"], studio.probes, strict=True):
        assert {k: item[k] for k in ("pre", "post", "verdict", "changed")} == _continuation(probe)
    # the pre-edit figures are the unedited model's, the post-edit ones the edited model's
    raw = cli["target_scores"]["raw"]
    assert raw["post"]["probability"] > raw["pre"]["probability"]
    assert 0.0 <= raw["pre"]["token_accuracy"] <= 1.0


def test_mean_known_skips_missing_values():
    assert mean_known([1.0, None, 0.0]) == 0.5
    assert mean_known(v for v in (None, None)) is None
    assert mean_known([]) is None
