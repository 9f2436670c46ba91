"""``results`` on a tiny model writes the report with its sections and figures."""
from __future__ import annotations

import json
import re

import pytest

from instructedit import cli
from instructedit.editing.editor import Editor
from instructedit.evaluate.report import pct, table
from instructedit.evaluate.results import FRESH_INSTRUCTIONS, harmonic
from instructedit.instructions import TASKS
from instructedit.model.backbone import load_backbone


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    from tests.data.layout import make_data_dir

    root = tmp_path_factory.mktemp("results")
    data = make_data_dir(root / "data")
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    Editor.untrained(backbone, 0.5, normalize=True).save_pretrained(root / "ck" / "instructedit")
    Editor.untrained(backbone, 0.5, normalize=True, use_instructions=False).save_pretrained(
        root / "ck" / "mend-multitask")
    return root, data


def run(capsys, *args):
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def test_results_writes_all_sections(capsys, setup, tiny_llama_dir):
    root, data = setup
    out = root / "docs" / "results.md"
    code, captured = run(capsys, "results", "--data", str(data), "--out", str(out),
                         "--figures", str(root / "docs" / "figures"), "--model", str(tiny_llama_dir),
                         "--instructedit", str(root / "ck" / "instructedit"),
                         "--baseline", str(root / "ck" / "mend-multitask"), "--limit", "2",
                         "--pca-limit", "2", "--sweep-limit", "1", "--quants", "none,4bit",
                         "--no-progress")
    assert code == 0, captured.err
    text = out.read_text()
    for heading in ("## What a user sees (plain protocol)", "## 1. Multi-task and hold-out editing", "## 2. Seen vs unseen instructions",
                    "## 3. Quantized backbones", "## 3b. How edits are stored",
                    "## 4. Transformed gradients", "## 5. Task scaling"):
        assert heading in text
    assert "| rank 8 (default, as in the app) |" in text and "| full rank |" in text
    assert "rank 8 vs full rank, in points" in text
    for method in ("Unedited", "Gradient step", "MEND multi-task", "InstructEdit"):
        assert f"| {method} |" in text
    assert "4-bit (nf4)" in text and "**Findings.**" in text
    assert "Skipped" in text                              # no task-scaling checkpoints
    assert (root / "docs" / "figures" / "pca_instructedit.png").is_file()
    assert (root / "docs" / "figures" / "pca_mend_multitask.png").is_file()
    assert "](figures/pca_instructedit.png)" in text
    assert "Chosen:" in text                               # the step-size sweep ran
    assert re.search(r"limit 2 records per task", text)


def test_results_sections_pick_what_runs(capsys, setup, tiny_llama_dir):
    root, data = setup
    out = root / "user.md"
    code, captured = run(capsys, "results", "--data", str(data), "--out", str(out),
                         "--model", str(tiny_llama_dir), "--instructedit", str(root / "ck" / "instructedit"),
                         "--baseline", str(root / "ck" / "mend-multitask"), "--sections", "user",
                         "--user-quant", "none", "--user-limit", "2", "--step-size", "0.5",
                         "--no-progress")
    assert code == 0, captured.err
    text = out.read_text()
    assert "## What a user sees (plain protocol)" in text and "## 1. Multi-task" not in text
    assert "| NS |" in text or " NS |" in text
    rows = [line for line in text.splitlines() if line.startswith("| InstructEdit | CounterFact |")]
    assert len(rows) == 1 and "n/a" not in rows[0]
    code, captured = run(capsys, "results", "--data", str(data), "--out", str(out),
                         "--sections", "user,bogus", "--no-progress")
    assert code != 0 and "bogus" in captured.err


def test_results_rome_apart_on_fewer_records(capsys, setup, tiny_llama_dir):
    """--rome-limit below --limit: ROME in a table of its own (1b) beside the others cut to its records."""
    root, data = setup
    out = root / "rome.md"
    argv = ("results", "--data", str(data), "--out", str(out), "--model", str(tiny_llama_dir),
            "--instructedit", str(root / "ck" / "instructedit"), "--baseline", str(root / "ck" / "mend-multitask"),
            "--sections", "table3", "--limit", "3", "--rome-limit", "2", "--rome-tasks", "counterfact",
            "--step-size", "0.5", "--no-progress", "--cache-dir", str(root / "rome-cache"))
    code, captured = run(capsys, *argv)
    assert code == 0, captured.err
    text = out.read_text()
    assert "read from the cache" not in text and "(cached)" not in text
    main, apart = text.split("## 1b. Table 3 with ROME beside the trained editors")
    main = main.split("## 1. Multi-task")[1]
    assert "| ROME |" not in main and "| InstructEdit |" in main
    assert "| ROME |" in apart and "| InstructEdit |" in apart and "limit 2 records per task" in apart
    assert "**Findings.** Mean over CounterFact" in apart and "--rome-limit 2" in text
    rome_runs = [line for line in text.splitlines() if line.startswith("| ROME | counterfact |")]
    assert len(rome_runs) == 1 and "| 2 |" in rome_runs[0]    # ROME ran on 2 records, not 3
    # run again: every evaluation comes from the cache, and the report says so
    code, captured = run(capsys, *argv)
    assert code == 0, captured.err
    again = out.read_text()
    runs = again.split("## Run times")[1]
    n = sum(1 for line in runs.splitlines() if line.startswith("| ") and not line.startswith("| Run"))
    assert f"{n} of {n} evaluations were read from the cache" in again and "(cached)" in runs


def test_results_trace_section(capsys, setup, tiny_llama_dir):
    root, data = setup
    out = root / "trace.md"
    code, captured = run(capsys, "results", "--data", str(data), "--out", str(out),
                         "--figures", str(root / "tfig"), "--model", str(tiny_llama_dir),
                         "--sections", "trace", "--trace-limit", "2", "--no-progress")
    assert code == 0, captured.err
    text = out.read_text()
    assert "## 6. Where facts live" in text and "## 1. Multi-task" not in text
    assert "Not run" not in text


def test_results_with_missing_checkpoints_still_writes(capsys, setup, tiny_llama_dir):
    root, data = setup
    out = root / "missing.md"
    code, captured = run(capsys, "results", "--data", str(data), "--out", str(out),
                         "--figures", str(root / "fig2"), "--model", str(tiny_llama_dir),
                         "--instructedit", str(root / "nope-a"), "--baseline", str(root / "nope-b"),
                         "--limit", "1", "--step-size", "0.5", "--quants", "none", "--no-progress")
    assert code == 0, captured.err
    text = out.read_text()
    assert "n/a" in text and "were not available" in text and "no editor checkpoint" in text


def test_fresh_instructions_are_new():
    for task, text in FRESH_INSTRUCTIONS.items():
        assert text not in TASKS[task].instructions
    assert ("[TOPIC]" in FRESH_INSTRUCTIONS["convsent"]) and ("[LABEL]" in FRESH_INSTRUCTIONS["convsent"])


def test_report_helpers():
    assert pct(0.1234) == "12.3" and pct(None) == "–" and pct(1.0, bold=True) == "**100.0**"
    assert harmonic(1.0, 0.0) == 0.0 and harmonic(0.5, 0.5) == pytest.approx(0.5)
    assert table(["a", "b"], [["1", "2"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


# ----- several lanes (processes) sharing one run ------------------------------------------------
def _results(capsys, root, data, tiny_llama_dir, out, *extra):
    argv = ["results", "--data", str(data), "--out", str(out), "--model", str(tiny_llama_dir),
            "--instructedit", str(root / "ck" / "instructedit"), "--baseline", str(root / "ck" / "mend-multitask"),
            "--sections", "table3,instructions", "--limit", "2", "--sweep-limit", "1", "--no-rome",
            "--threads", "1", "--no-progress", *extra]
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return out.read_text()


def _tables(text: str) -> list[str]:
    """The report's result rows, without its timings (each table's "ms/edit" column, run times)."""
    rows, timed = [], False
    for line in text.split("## Run times")[0].splitlines():
        if not line.startswith("| ") or "Training time" in line:
            continue
        if line.startswith("| Method"):
            timed = line.rstrip(" |").endswith("(ms/edit)")
        rows.append(line.rsplit("|", 2)[0] if timed else line)
    return rows


def test_two_lanes_share_the_evaluations_and_write_the_same_report(capsys, setup, tiny_llama_dir):
    root, data = setup
    one = _results(capsys, root, data, tiny_llama_dir, root / "one.md")
    cache = root / "lanes-cache"
    two = _results(capsys, root, data, tiny_llama_dir, root / "two.md", "--lanes", "2", "--cache-dir", str(cache))
    assert _tables(two) == _tables(one)
    assert "(cached)" not in two and "read from the cache" not in two   # made in this run, by its lanes
    assert "shared by 2 processes of 1 torch thread(s) each" in two and "--lanes 2 --cache-dir" in two
    entries = [json.loads(p.read_text()) for p in cache.glob("*.json")]
    runs = two.split("## Run times")[1]
    listed = sum(1 for line in runs.splitlines() if line.startswith("| ") and not line.startswith("| Run"))
    assert len(entries) == listed                        # each evaluation ran once, in one lane
    assert len({e["pid"] for e in entries}) == 2         # and both lanes ran some
    assert len({e["run_id"] for e in entries}) == 1
    assert not list(cache.glob("*.claim")) and not list(cache.glob(".*.tmp"))
    # again: everything comes from the cache, as from an earlier run
    again = _results(capsys, root, data, tiny_llama_dir, root / "again.md", "--lanes", "2",
                     "--cache-dir", str(cache))
    assert _tables(again) == _tables(one) and f"{listed} of {listed} evaluations were read from the cache" in again


def test_lanes_need_a_cache_folder(capsys, setup, tiny_llama_dir):
    root, data = setup
    code = cli.main(["results", "--data", str(data), "--out", str(root / "x.md"), "--lanes", "2"])
    assert code != 0 and "--cache-dir" in capsys.readouterr().err
    code = cli.main(["results", "--data", str(data), "--out", str(root / "x.md"), "--lanes", "0"])
    assert code != 0 and "--lanes" in capsys.readouterr().err
    assert not (root / "x.md").exists()
