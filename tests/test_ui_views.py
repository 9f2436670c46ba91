"""Gradio-free pieces of the app: diffs, tables, pages, start-up fallbacks, the command line."""
from __future__ import annotations

from pathlib import Path

import pytest

import app as app_module
from instructedit.backbone import load_backbone
from instructedit.checkpoint import CheckpointError
from instructedit.ui.config import AppConfig, Limits, cpu_threads
from instructedit.ui.diff import ADDED, REMOVED, word_diff
from instructedit.ui.loading import LoadedModels, load_editor, resolve_quant, status_line
from instructedit.ui.measure import EditReport, EditScores, ProbeResult, RephraseResult
from instructedit.ui.pages import MISSING_RESULTS, diagram_html, load_results
from instructedit.ui.views import (
    HISTORY_HEADERS,
    instruction_label,
    probe_table,
    rephrase_table,
    report_summary,
)


def test_word_diff_marks_changed_words_only():
    before, after = word_diff(" basketball player and coach", " soccer player and coach")
    assert "".join(t for t, _ in before) == " basketball player and coach"
    assert "".join(t for t, _ in after) == " soccer player and coach"
    assert before[0] == (" basketball", REMOVED) and after[0] == (" soccer", ADDED)
    assert before[1] == (" player and coach", None)
    assert word_diff("", "") == ([], [])
    assert word_diff("same", "same") == ([("same", None)], [("same", None)])


def _report() -> EditReport:
    return EditReport(editor="e", model_input="Task: x\nDescription: y\nInput: p", target="soccer",
                      before=" basketball", after=" soccer", prob_before=2e-5, prob_after=0.93,
                      rephrases=(RephraseResult("r", "Task...r", 0.01, 0.5, 1.0, "a", " soccer"),),
                      probes=(ProbeResult("q", " b", " b", "b", 1.0), ProbeResult("z", " c", " d", None, None)),
                      scores=EditScores(1.0, 1.0, 1.0), edit_ms=120.0, measure_ms=2500.0)


def test_tables_and_summary():
    report = _report()
    summary = report_summary(report)
    assert "Reliability 100%" in summary and "2.0e-05 → **93.0%**" in summary
    assert report_summary(None, "baseline failed") == "⚠ baseline failed"
    assert rephrase_table(report).values.tolist() == [["r", "1.0% → 50.0%", "100%", "soccer"]]
    rows = probe_table(report).values.tolist()
    assert rows[0][3] == "yes · 100%" and rows[1][3] == "no · –"
    assert rephrase_table(None).empty and len(HISTORY_HEADERS) == 9
    assert [instruction_label("counterfact", c) for c in (0, 9, "heldout", None)] == ["#1", "held out", "held out", "none"]


def test_results_tab_content(tmp_path):
    missing = load_results(tmp_path / "results.md", tmp_path / "figures")
    assert not missing.available and "make results" in MISSING_RESULTS
    (tmp_path / "results.md").write_text("| a |\n|---|\n| 1 |\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "pca.png").write_bytes(b"\x89PNG")
    present = load_results(tmp_path / "results.md", tmp_path / "figures")
    assert present.available and present.figures[0].name == "pca.png"
    assert "<svg" in diagram_html()


def test_command_line_defaults_and_limits():
    parser = app_module.build_parser()
    config = app_module.config_from_args(parser.parse_args([]))
    assert config.host == "127.0.0.1" and config.share is False and config.quant is None
    assert resolve_quant(None, "cpu") == "4bit" and resolve_quant("8bit", "cpu") == "8bit"
    config = app_module.config_from_args(parser.parse_args(["--max-edits-per-session", "3", "--queue-size", "5",
                                                            "--max-input-chars", "100", "--threads", "1"]))
    assert config.limits.max_edits_per_session == 3 and config.limits.queue_size == 5
    assert cpu_threads(config) == 1 and cpu_threads(AppConfig(limits=Limits(concurrency_limit=64))) == 1
    with pytest.raises(ValueError, match="max_input_chars"):
        Limits(max_input_chars=5000)


def test_missing_shipped_editor_falls_back_with_a_warning(tiny_llama_dir, tmp_path):
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    default = str(tmp_path / "not-trained-yet")
    editor, warning = load_editor(default, backbone, role="InstructEdit editor", default=default,
                                  use_instructions=True)
    assert editor.name.startswith("gradient-step") and "plain gradient step" in warning
    baseline, _ = load_editor("none", backbone, role="Baseline", default=default, use_instructions=False)
    assert not baseline.use_instructions
    with pytest.raises(CheckpointError):
        load_editor(str(tmp_path / "typo"), backbone, role="InstructEdit editor", default=default,
                    use_instructions=True)
    line = status_line(LoadedModels(backbone, editor, None, [warning]))
    assert "**quantization** none" in line and "**baseline** hidden" in line and "⚠" in line
    assert Path(backbone.source).name in line or backbone.model_id in line
