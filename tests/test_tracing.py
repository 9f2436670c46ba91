"""Causal tracing: restore-all / restore-none endpoints, batched grid = single runs, averages by
token category, readings, heatmaps, the ``trace`` command, and per-context interventions."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from instructedit.data.formats import load_records
from instructedit.editing.rome import SubjectError
from instructedit.model.adapters import intervene
from instructedit.model.backbone import load_backbone
from instructedit.tracing import (
    CATEGORIES,
    AverageEffect,
    average_indirect_effect,
    format_table,
    predicts,
    restored_probability,
    save_heatmap,
    summarise,
    token_categories,
    trace,
)
from tests.cli_helpers import run_main

PROMPT, SUBJECT = "The Eiffel Tower is located in", "Eiffel Tower"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_restore_all_gives_clean_and_restore_none_gives_corrupted(backbone):
    result = trace(backbone, PROMPT, SUBJECT, samples=3, kinds=("hidden",))
    n_layers, n_tokens = backbone.adapter.num_layers(backbone.model), len(result.tokens)
    assert result.corrupted_prob != pytest.approx(result.clean_prob, abs=1e-6)  # the noise matters
    every = [("hidden", layer, t) for layer in range(n_layers) for t in range(n_tokens)]
    restored = restored_probability(backbone, PROMPT, SUBJECT, every, samples=3)
    assert restored["clean"] == pytest.approx(result.clean_prob, abs=1e-7)
    assert restored["restored"] == pytest.approx(result.clean_prob, rel=1e-4, abs=1e-7)
    nothing = restored_probability(backbone, PROMPT, SUBJECT, [], samples=3)
    assert nothing["restored"] == pytest.approx(result.corrupted_prob, rel=1e-4, abs=1e-7)
    # the last block's output at the last token decides the answer: restoring it is restoring all
    assert result.scores["hidden"][-1, -1] == pytest.approx(result.clean_prob, rel=1e-4, abs=1e-7)


def test_grid_equals_single_restorations(backbone):
    result = trace(backbone, PROMPT, SUBJECT, samples=2, window=2)
    n_layers = backbone.adapter.num_layers(backbone.model)
    assert set(result.scores) == {"hidden", "mlp", "attn"}
    for grid in result.scores.values():
        assert grid.shape == (n_layers, len(result.tokens)) and np.isfinite(grid).all()
    s0, s1 = result.subject_range
    assert "".join(result.tokens[s0:s1]).strip() == SUBJECT
    assert np.all(result.scores["mlp"][:, :s0] == result.corrupted_prob)  # before the subject: no change
    last = len(result.tokens) - 1
    single = restored_probability(backbone, PROMPT, SUBJECT, [("hidden", 1, s1 - 1)], samples=2)
    assert result.scores["hidden"][1, s1 - 1] == pytest.approx(single["restored"], rel=1e-4, abs=1e-7)
    # MLP / attention windows of 2 centred on layer l: layers l-1 and l restored together
    for kind, layer, token in [("mlp", 1, s1 - 1), ("attn", 2, last)]:
        pair = [(kind, layer - 1, token), (kind, layer, token)]
        both = restored_probability(backbone, PROMPT, SUBJECT, pair, samples=2)
        assert result.scores[kind][layer, token] == pytest.approx(both["restored"], rel=1e-4, abs=1e-7)
    first = restored_probability(backbone, PROMPT, SUBJECT, [("mlp", 0, s1 - 1)], samples=2)
    assert result.scores["mlp"][0, s1 - 1] == pytest.approx(first["restored"], rel=1e-4, abs=1e-7)


def test_trace_is_seeded_and_traces_a_given_answer(llama):
    a = trace(llama, PROMPT, SUBJECT, samples=2, kinds=("mlp",), tokens="last_subject", seed=3)
    b = trace(llama, PROMPT, SUBJECT, samples=2, kinds=("mlp",), tokens="last_subject", seed=3)
    c = trace(llama, PROMPT, SUBJECT, samples=2, kinds=("mlp",), tokens="last_subject", seed=4)
    np.testing.assert_array_equal(a.scores["mlp"], b.scores["mlp"])
    assert a.corrupted_prob != c.corrupted_prob
    traced = ~np.isnan(a.scores["mlp"]).all(0)
    assert traced.tolist() == [t == a.subject_range[1] - 1 for t in range(len(a.tokens))]
    paris = trace(llama, PROMPT, SUBJECT, "Paris", samples=2, kinds=("mlp",), tokens=[-1])
    assert paris.answer_token == llama.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(SubjectError, match="does not occur"):
        trace(llama, PROMPT, "Louvre")
    with pytest.raises(ValueError, match="unknown kind"):
        trace(llama, PROMPT, SUBJECT, kinds=("ffn",))


def test_token_categories():
    # tokens: 0 before, 1-3 subject, 4 first after, 5 further, 6 last
    assert token_categories(7, (1, 4)) == [None, 0, 1, 2, 3, 4, 5]
    assert token_categories(3, (0, 1)) == [2, 3, 5]          # one-token subject: its last token
    assert token_categories(2, (0, 2)) == [0, 2]             # subject at the end


def test_average_indirect_effect_skips_bad_records(backbone):
    records = [(PROMPT, SUBJECT), ("Rome is in Italy", "Rome"), ("no subject here", "Louvre")]
    average = average_indirect_effect(backbone, records, samples=2, kinds=("mlp", "attn"))
    n_layers = backbone.adapter.num_layers(backbone.model)
    assert average.n_records == 2 and average.skipped == ["no subject here"]
    assert average.effects["mlp"].shape == (n_layers, len(CATEGORIES))
    assert average.counts[CATEGORIES.index("last subject token")] == 2
    assert 0 <= average.best_layer("mlp") < n_layers
    last_only = average_indirect_effect(backbone, records[:1], samples=2, kinds=("mlp",),
                                        tokens="last_subject", limit=1)
    assert last_only.counts.tolist() == [0, 0, 1, 0, 0, 0]
    assert json.loads(json.dumps(last_only.to_dict()))["best_layer"]["mlp"] == last_only.best_layer()


def test_readings_and_heatmaps(llama, tmp_path):
    result = trace(llama, PROMPT, SUBJECT, samples=2)
    line = summarise(result)
    assert "\n" not in line and "clean" in line and "corrupted" in line
    table = format_table(result)
    assert "MLP output restored" in table and "* " in table
    average = average_indirect_effect(llama, [(PROMPT, SUBJECT)], samples=2)
    assert isinstance(average, AverageEffect) and "over 1 records" in summarise(average)
    for item, name in ((result, "one.png"), (average, "avg.png")):
        path = save_heatmap(item, tmp_path / "sub" / name)
        assert path.read_bytes()[:8] == PNG_MAGIC
    json.dumps(result.to_dict())


def test_trace_cli(capsys, tiny_gpt2_dir, tmp_path):
    out = tmp_path / "heatmap.png"
    code, stdout, stderr = run_main(capsys, "trace", "--model", str(tiny_gpt2_dir), "--prompt", PROMPT,
                                    "--subject", SUBJECT, "--samples", "2", "--out", str(out))
    assert code == 0, stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert "hidden state (block output) restored" in stdout and "heatmap written" in stdout
    code, stdout, stderr = run_main(capsys, "trace", "--model", str(tiny_gpt2_dir), "--prompt", PROMPT,
                                    "--subject", SUBJECT, "--samples", "2", "--kinds", "mlp", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert set(report["scores"]) == {"mlp"} and len(report["scores"]["mlp"]) == 4


def test_trace_cli_records(capsys, tiny_llama_dir, tmp_path):
    records = str(Path(__file__).parent / "data" / "easyedit_cf.json")
    out = tmp_path / "average.png"
    code, stdout, stderr = run_main(capsys, "trace", "--model", str(tiny_llama_dir), "--records", records,
                                    "--answers", "greedy", "--limit", "2", "--samples", "2",
                                    "--kinds", "mlp", "--out", str(out), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["n_records"] == 2 and report["counts"] == [0, 0, 2, 0, 0, 0]
    assert 0 <= report["best_layer"]["mlp"] < 4 and out.read_bytes()[:8] == PNG_MAGIC
    code, stdout, stderr = run_main(capsys, "trace", "--model", str(tiny_llama_dir), "--records", records,
                                    "--answers", "greedy", "--limit", "1", "--samples", "2", "--kinds", "mlp")
    assert code == 0, stderr
    assert "best layer for MLP restoration at the last subject token" in stdout
    # the default --answers known traces only the records whose true answer the model predicts
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    known = [r.id for r in load_records(records) if predicts(backbone, r.prompt, r.ground_truth)]
    code, stdout, err = run_main(capsys, "trace", "--model", str(tiny_llama_dir), "--records", records,
                                 "--samples", "2", "--kinds", "mlp", "--json")
    if known:
        assert code == 0, err
        report = json.loads(stdout)
        assert report["n_records"] == len(known) and len(report["skipped"]) == 3 - len(known)
    else:
        assert code == 2 and "no record could be traced" in err


def test_trace_cli_errors(capsys, tiny_llama_dir):
    code, _, err = run_main(capsys, "trace", "--model", str(tiny_llama_dir), "--prompt", PROMPT)
    assert code == 2 and "--subject is required" in err
    code, _, err = run_main(capsys, "trace", "--model", str(tiny_llama_dir), "--prompt", PROMPT,
                            "--subject", "Louvre")
    assert code == 2 and "does not occur" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(capsys, "trace", "--model", str(tiny_llama_dir), "--prompt", PROMPT,
                            "--subject", SUBJECT, "--kinds", "ffn")
    assert code == 2 and "--kinds" in err
    code, _, err = run_main(capsys, "trace", "--records", "/nonexistent/counterfact")
    assert code == 2 and "no such folder" in err


def test_interventions_are_per_context(llama):
    """Another thread running the same model while an intervention is active sees none of it."""
    ids = torch.tensor([llama.tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        base = llama.model(input_ids=ids).logits
    name = llama.adapter.mlp_name(1)
    entered, checked = threading.Event(), threading.Event()
    seen = {}

    def other_user():
        entered.wait(10)
        with torch.no_grad():
            seen["logits"] = llama.model(input_ids=ids).logits
        checked.set()

    thread = threading.Thread(target=other_user)
    thread.start()
    with intervene(llama.model, {name: lambda x, out: out + 100.0}):
        with torch.no_grad():
            inside = llama.model(input_ids=ids).logits
        entered.set()
        checked.wait(10)
    thread.join(10)
    assert not torch.equal(inside, base)
    assert torch.equal(seen["logits"], base)
    with torch.no_grad():
        assert torch.equal(llama.model(input_ids=ids).logits, base)
