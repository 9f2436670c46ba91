"""The bench command: a --quick smoke run on a tiny model."""
from __future__ import annotations

import json
import math

import pytest

from instructedit import cli
from tests.data.layout import make_data_dir

TOP_KEYS = {"machine", "config", "model", "editor", "backbone", "edit_latency", "generation", "memory",
            "compression", "finetune", "training", "evaluation", "goals", "timing", "command"}
MODES = ("none", "8bit", "4bit")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0


def _summary_ok(summary: dict) -> bool:
    return set(summary) == {"median", "min", "max", "n"} and summary["min"] <= summary["median"] <= summary["max"]


@pytest.fixture(scope="module")
def quick_result(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = make_data_dir(root / "data")
    out = root / "benchmarks.md"
    args = ["bench", "--model", str(tiny_llama_dir), "--editor", "none", "--step-size", "1",
            "--data", str(data), "--threads", "1", "--quick", "--json", "--out", str(out)]
    return args, out


def test_bench_quick_json_and_report(capsys, quick_result):
    args, out = quick_result
    code = cli.main(args)
    stdout = capsys.readouterr().out
    assert code == 0
    result = json.loads(stdout)
    assert TOP_KEYS <= set(result)
    assert result["config"]["quick"] is True
    assert result["machine"]["torch_threads"] == 1
    for mode in MODES:
        lat = result["edit_latency"][mode]
        assert {"edit_ms", "floor_ms", "ratio", "tokens", "goal", "met"} <= set(lat)
        assert _positive(lat["ratio"]) and _summary_ok(lat["edit_ms"]) and _summary_ok(lat["floor_ms"])
        gen = result["generation"][mode]
        assert gen["variants"][0] == "as_stored"
        for variant in gen["variants"]:
            assert set(gen[variant]["tokens_per_s"]) == {"0", "1", "2", "3"}
            assert gen[variant]["factor_rows"]["0"] == 0 and gen[variant]["factor_rows"]["3"] > 0
            assert all(_positive(s["median"]) for s in gen[variant]["tokens_per_s"].values())
            assert all(_positive(1 + o) for o in gen[variant]["overhead"].values())
        size = result["memory"]["edit_size"][mode]
        assert _positive(size["bytes"]["median"]) and size["modules"] == 9
    first = result["first_answer"]  # the studio's first answer, on the app's backbone
    assert first["records"] == 1 and first["quantization"] in MODES
    assert first["cold_s"]["median"] <= first["whole_s"]["median"] and _summary_ok(first["warm_s"])
    assert any(row["goal"].startswith("studio: edit request to first look") for row in result["goals"])
    footprint = result["memory"]["footprint"]
    assert set(footprint["bytes"]) == set(MODES)
    assert all(_positive(v) for v in footprint["share_of_fp32"].values())
    assert footprint["share_of_fp32"]["4bit"] < 1
    ft = result["finetune"]
    assert _positive(ft["speedup"]) and _positive(ft["total_time_speedup"])
    for method in ("editor", "finetune"):
        assert 0 <= ft[method]["reliability"] <= 1 and _summary_ok(ft[method]["latency_ms"])
    tr = result["training"]
    assert _positive(tr["speedup"]) and _positive(tr["cached_steps_per_s"]["median"])
    ro = result["rome"]
    assert ro["records"] == 1 and _summary_ok(ro["rome_ms"]) and _summary_ok(ro["editor_ms"])
    assert _positive(ro["slowdown"])
    assert tr["cached_breakdown_s"]["total"] > 0
    ev = result["evaluation"]
    assert ev["quantization"] == "4bit" and _positive(ev["records_per_s"])
    assert _positive(ev["sequential"]["records_per_s"])
    variants = result["compression"]["variants"]
    assert {"full rank", "full rank bf16", "rank 1", "rank 2", "rank 1 bf16"} <= set(variants)
    assert variants["rank 1"]["bytes"]["median"] < variants["full rank"]["bytes"]["median"]
    assert all({"goal", "target", "value", "met", "note"} <= set(g) for g in result["goals"])
    report = out.read_text()
    for heading in ("# Benchmarks", "## Machine and run", "## Goals", "## 1. Edit latency",
                    "## 2. Generation speed", "## 3. Memory", "## 4. InstructEdit editor vs", "## 4b. ROME beside",
                    "## 5. Training step", "## 6. Evaluation throughput", "2-core CPU only"):
        assert heading in report, heading
    assert result["machine"]["cpu_model"] in report
    if not tr["met"]:  # a missed goal is explained with its bound
        assert "Caching skips" in report and "## Where goals are missed" in report
    if not ft["met"]:
        assert "would need a fine-tune of" in report


def test_bench_rejects_bad_threads(capsys):
    code = cli.main(["bench", "--threads", "0", "--quick"])
    assert code == 2
    assert "--threads" in capsys.readouterr().err


# ----- sections 3 and 6 measure through the evaluator ---------------------------------------------
@pytest.fixture(scope="module")
def bench_editor(tiny_llama_dir):
    from instructedit.editing.editors import GRADIENT, load_editor
    from instructedit.model.backbone import load_backbone

    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    return load_editor(GRADIENT, backbone, step_size=1.0, patch_rank=None)


@pytest.fixture(scope="module")
def bench_records(tmp_path_factory):
    from instructedit.bench.workload import counterfact_records

    return counterfact_records(str(make_data_dir(tmp_path_factory.mktemp("bench_data") / "data")), 3)


def test_bench_renders_edit_inputs_as_the_edit_request(bench_editor, bench_records):
    """The compression study's patches come from :func:`edit_request`; the evaluator scores them
    on its own rendering of the record: both must be the same text."""
    from instructedit.bench.workload import edit_request, eval_config
    from instructedit.evaluate.runner import Evaluator

    evaluator = Evaluator(bench_editor.backbone, bench_editor, eval_config(1))
    for record, item in zip(bench_records, evaluator.render(bench_records), strict=True):
        request = edit_request(record)
        assert item.edit_input == request.edit_input(bench_editor.use_instructions)
        assert item.rephrases == tuple(request.wrap(r, bench_editor.use_instructions)
                                       for r in record.rephrases)


def test_compression_full_rank_scores_as_the_evaluator_scores_the_editor(bench_editor, bench_records):
    """Stored full-rank edits, measured by the evaluator, score as the evaluator scores the
    editor itself (the same measuring path as ``eval``); truncation only changes the numbers."""
    from instructedit.bench.memory import compression
    from instructedit.bench.workload import edit_request, eval_config, summary_scores
    from instructedit.evaluate.runner import Evaluator

    edits = [bench_editor.edit(edit_request(r)) for r in bench_records]
    result = compression(bench_editor, bench_records, edits, (1,))
    assert result["edits"] == len(bench_records)
    assert set(result["variants"]) == {"full rank", "full rank bf16", "rank 1", "rank 1 bf16"}
    direct = Evaluator(bench_editor.backbone, bench_editor, eval_config(1)).run(bench_records, "test")
    full = result["variants"]["full rank"]
    expected = summary_scores(direct.summary)
    for name in ("reliability", "generalization", "locality"):
        assert full[name] == pytest.approx(expected[name], abs=1e-3), name
    assert full["n"] == len(bench_records)
    rank1 = result["variants"]["rank 1"]
    assert rank1["bytes"]["median"] < full["bytes"]["median"]
    assert all(0 <= rank1[name] <= 1 for name in ("reliability", "generalization", "locality"))


def test_evaluation_loops_are_the_evaluator(bench_editor, bench_records):
    from instructedit.bench.evaluation import measure_evaluation

    ev = measure_evaluation(bench_editor, bench_records, batch_size=2)
    batched, sequential = ev["evaluator"], ev["sequential"]
    assert (batched["batch_size"], sequential["batch_size"]) == (2, 1)
    assert batched["records_per_s_per_pass"]["n"] == 2 and sequential["records_per_s_per_pass"]["n"] == 3
    assert ev["records_per_s"] == batched["records_per_s"] and _positive(sequential["records_per_s"])
    for loop in (batched, sequential):
        assert loop["scores"]["n"] == len(bench_records) and _positive(loop["edit_ms_per_record"])
        assert "Evaluator" in loop["implementation"]
    # the same records, edited alone or in a batch, score the same
    for name in ("reliability", "generalization", "locality"):
        assert batched["scores"][name] == pytest.approx(sequential["scores"][name], abs=1e-3), name
