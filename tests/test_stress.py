"""The load and isolation test (tests.stress), short enough for CI: 4 users, 2 rounds, tiny model.

The long run (16 users, SmolLM2-135M in 4 bit) is ``python -m tests.stress``; its figures
are in docs/reliability.md.
"""
from __future__ import annotations

import json

import pytest

from instructedit.editing.editor import Editor
from instructedit.model.backbone import load_backbone
from instructedit.web.config import Limits
from instructedit.web.service import EditService
from tests import load_table, stress
from tests.stress import StressConfig, StressReport, compare_round, latency_summary, run_stress

pytest.importorskip("gradio_client")


def test_short_stress_run(tiny_llama_dir, tmp_path):
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    limits = Limits(max_new_tokens=5, max_edits_per_session=3, max_input_chars=200, max_lines=3)
    service = EditService(backbone, Editor.untrained(backbone, step_size=0.5),
                          Editor.untrained(backbone, step_size=0.5, use_instructions=False), limits,
                          export_dir=tmp_path / "exports")
    config = StressConfig(users=4, rounds=2, warmup_rounds=1, request_timeout_s=60, deadline_s=240,
                          close_timeout_s=30, heartbeat_s=0.25)
    report = run_stress(service, config)
    print(report.text())
    assert report.errors == [] and report.mismatches == []
    assert report.phase.edits == 4 * 2 and len(report.phase.edit_ms) == 8
    assert report.phase.generate_ms and report.phase.edits_per_minute > 0
    assert report.sessions_after_close == 0 and report.edits_after_close == 0
    assert report.memory_ok, report.text()
    assert report.peak_active_edits >= 1 and report.patch_bytes_per_edit > 0
    assert report.ok and service.stats() == {"sessions": 0, "edits": 0}
    # the load page (make load) reads the run's --json output
    run = tmp_path / "u4.json"
    run.write_text(json.dumps(report.to_dict()))
    assert load_table.main([str(run), "--out", str(tmp_path / "load.md")]) == 0
    page = (tmp_path / "load.md").read_text()
    assert "| 4 | one at a time | PASS (0 errors, 0 isolation mismatches) |" in page
    assert "python -m tests.stress --users 4 --rounds 2 --request-timeout 60 --deadline 240" in page
    assert load_table.main([str(tmp_path / "missing.json")]) == 2


def _seen(own_on="EDITED", probe_on="probe", report=None, sizes=(1, 0), after_undo=("base", "base")):
    return {"report": report or {"instructedit": {"after": "x"}}, "history_after_edit": sizes[0],
            "history_after_undo": sizes[1], "own": ("base", own_on), "probe": ("probe", probe_on),
            "own_after_undo": after_undo}


def test_the_checks_catch_crossover_and_leftovers():
    prompt = stress.user_edit(0)[0]
    base = {prompt: "base", stress.SHARED_PROBE: "probe"}
    reference = _seen()
    assert compare_round(0, 0, _seen(), reference, base) == []
    assert compare_round(0, 0, _seen(own_on="SOMEONE ELSE'S EDIT"), reference, base)
    assert compare_round(0, 0, _seen(probe_on="changed"), reference, base)
    assert compare_round(0, 0, _seen(report={"instructedit": {"after": "y"}}), reference, base)
    assert compare_round(0, 0, _seen(sizes=(2, 1)), reference, base)
    assert compare_round(0, 0, _seen(after_undo=("base", "EDITED")), reference, base)
    leaky = StressReport("m", "e", None, {}, {"memory_tolerance": 0.1}, rss_warm_mib=100, rss_after_mib=100,
                         sessions_after_close=0, edits_after_close=0)
    assert leaky.ok
    leaky.sessions_after_close = 1
    assert not leaky.ok
    leaky.sessions_after_close, leaky.rss_after_mib = 0, 111
    assert not leaky.memory_ok and not leaky.ok


def test_helpers_and_cli_bounds(capsys):
    assert stress.rss_bytes() > 10 * 2**20
    assert latency_summary([]) == {"n": 0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    s = latency_summary([float(i) for i in range(1, 101)])
    assert s["p50"] == 50.5 and s["p95"] == 95 and s["max"] == 100
    assert len({stress.user_edit(i) for i in range(40)}) == 40  # every user gets its own edit
    assert stress.build_parser().parse_args([]).users == 16
    assert stress.main(["--tiny", "--users", "0"]) == 2
    assert "users must be between" in capsys.readouterr().err
    with pytest.raises(ValueError):
        StressConfig(rounds=0)
