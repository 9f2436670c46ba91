"""The evaluation runner and the ``eval`` command on tiny random models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from instructedit.data import load_records
from instructedit.editing.editor import DEFAULT_PATCH_RANK, Editor
from instructedit.editing.patches import PatchEngine
from instructedit.evaluate import (
    SEEN,
    EvalConfig,
    Evaluator,
    limit_records,
    load_eval_editor,
    parse_instruction,
    render,
)
from instructedit.evaluate.inputs import instruction_for
from instructedit.evaluate.runner import make_forward
from instructedit.instructions import HELD_OUT_INDEX
from instructedit.model.backbone import load_backbone
from instructedit.model.forward import FullForward
from instructedit.scoring import full_model_answer_logits, score_answers, tokenize_answers
from tests.cli_helpers import run_main

DATA = Path(__file__).parent / "data"
RESULT_KEYS = {"n", "task", "reliability", "generalization", "locality", "portability",
               "target_prob_lift", "edit_latency_ms", "seconds"}


@pytest.fixture(scope="module")
def backbone(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def cf_records():
    return load_records(DATA / "easyedit_cf.json") + load_records(DATA / "rome_cf.json")


def quiet(**kw) -> EvalConfig:
    return EvalConfig(progress=False, **kw)


# ----- inputs ---------------------------------------------------------------------------------
def test_parse_instruction():
    assert parse_instruction(None) == SEEN
    assert parse_instruction("seen") == SEEN
    assert parse_instruction("none") is None
    assert parse_instruction("3") == 3
    assert parse_instruction("heldout") == "heldout"
    assert parse_instruction("Do the thing.") == "Do the thing."


def test_render_wraps_edit_rephrases_and_portability_but_not_locality():
    record = load_records(DATA / "mend_zsre.json")[0]
    item = render(record, 2)
    assert item.edit_input.startswith("Task: zsre\nDescription: ")
    assert item.edit_input.endswith("Input: " + record.prompt.strip())
    assert all(r.startswith("Task: zsre\n") for r in item.rephrases)
    assert [p for p, _ in item.locality] == [p.prompt.strip() for p in record.locality]
    plain = render(record, 2, use_instructions=False)
    assert plain.edit_input == record.prompt.strip() and plain.instruction is None
    assert render(record, None).edit_input == record.prompt.strip()
    knowedit = load_records(DATA / "knowedit.json")[0]
    port = render(knowedit, "Answer it.")
    assert port.portability and all(p.startswith("Task: custom\nDescription: Answer it.") for p, _ in port.portability)


def test_instruction_choices_are_seeded_and_filled():
    record = load_records(DATA / "easyedit_cf.json")[0]
    seen = instruction_for(record, SEEN, seed=0)
    assert seen in range(9) and seen == instruction_for(record, SEEN, seed=0)
    assert instruction_for(record, "heldout") == HELD_OUT_INDEX
    custom = load_records(DATA / "knowedit.json")[0]      # task custom: no fixed instructions
    assert instruction_for(custom, SEEN) is None and instruction_for(custom, 4) is None
    convsent = load_records(DATA / "convsent.json")[0]
    text = render(convsent, "Be [LABEL] about [TOPIC].").edit_input
    assert f"Be {convsent.label} about {convsent.topic}." in text and "[" not in text


def test_limit_records_is_a_seeded_sample_in_order():
    records = load_records(DATA / "convsent.json")
    a, b = limit_records(records, 3, seed=1), limit_records(records, 3, seed=1)
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 3
    positions = [records.index(r) for r in a]
    assert positions == sorted(positions)
    assert limit_records(records, 100) == records
    small, large = limit_records(records, 2, seed=4), limit_records(records, 5, seed=4)
    assert {r.id for r in small} <= {r.id for r in large}


# ----- runner ---------------------------------------------------------------------------------
def test_no_editor_scores_equal_the_unedited_model(backbone, cf_records):
    result = Evaluator(backbone, None, quiet(instruction=0)).run(cf_records)
    for record, res in zip(cf_records, result.records, strict=False):
        text = render(record, 0).edit_input
        batch = tokenize_answers(backbone.tokenizer, [text], [record.target_new], 64)
        with torch.no_grad():
            expected = score_answers(full_model_answer_logits(backbone.model, batch), batch)
        assert res.reliability == pytest.approx(float(expected.token_accuracy[0]))
        assert res.reliability == res.reliability_pre
        if record.locality:
            assert res.locality == 1.0 and res.locality_kl == pytest.approx(0.0, abs=1e-6)
        else:
            assert res.locality is None
        assert res.latency_ms is None
    assert result.summary.target_prob_lift == pytest.approx(0.0, abs=1e-5)
    assert result.summary.locality == 1.0


def test_tiny_edit_keeps_locality_and_huge_edit_breaks_it(backbone, cf_records):
    tiny = Evaluator(backbone, Editor.untrained(backbone, 1e-9), quiet()).run(cf_records).summary
    huge = Evaluator(backbone, Editor.untrained(backbone, 1e4), quiet()).run(cf_records).summary
    assert tiny.locality == 1.0 and tiny.locality_kl < 1e-6
    assert huge.locality < 0.9 and huge.locality_kl > 0.01
    assert huge.edit_latency_ms > 0


def test_edit_raises_the_target_probability(backbone, cf_records):
    summary = Evaluator(backbone, Editor.untrained(backbone, 1.0), quiet()).run(cf_records).summary
    assert summary.target_prob_lift > 0
    assert summary.target_prob_post > summary.target_prob_pre
    assert summary.reliability >= summary.reliability_pre


def test_batched_edits_are_independent(backbone, cf_records):
    editor = Editor.untrained(backbone, 1.0)
    together = Evaluator(backbone, editor, quiet(batch_size=8)).run(cf_records).records
    alone = Evaluator(backbone, editor, quiet(batch_size=1)).run(cf_records).records
    for a, b in zip(together, alone, strict=False):
        assert a.id == b.id
        for key in ("reliability", "generalization", "locality"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-6)
        assert a.target_logprob_post == pytest.approx(b.target_logprob_post, abs=1e-3)


def test_cached_forward_matches_the_full_model(backbone, cf_records):
    editor = Editor.untrained(backbone, 1.0)
    cached = Evaluator(backbone, editor, quiet())
    assert not isinstance(cached.forward, FullForward)
    full = Evaluator(backbone, editor, quiet())
    full.forward = FullForward(backbone)
    for a, b in zip(cached.run(cf_records).records, full.run(cf_records).records, strict=False):
        assert a.reliability == b.reliability and a.locality == b.locality
        assert a.target_logprob_post == pytest.approx(b.target_logprob_post, abs=1e-4)
    unedited = Evaluator(backbone, None, quiet())
    full_unedited = Evaluator(backbone, None, quiet())
    full_unedited.forward = FullForward(backbone)
    for a, b in zip(unedited.run(cf_records).records, full_unedited.run(cf_records).records, strict=True):
        assert a.reliability == b.reliability and a.generalization == b.generalization
    assert not isinstance(make_forward(backbone, None), FullForward)


def test_patch_rows_belong_to_their_records(backbone, cf_records):
    """An evaluation row scored with its own record's patch equals a single edit made alone."""
    editor = Editor.untrained(backbone, 1.0)
    record = cf_records[1]
    res = Evaluator(backbone, editor, quiet(instruction=0)).run(cf_records).records[1]
    from instructedit.editing.editor import EditRequest

    edit = editor.edit(EditRequest(record.prompt, record.target_new, task="counterfact", instruction=0))
    batch = tokenize_answers(backbone.tokenizer, [edit.wrapped_input], [record.target_new], 64)
    with torch.no_grad(), PatchEngine.activate(edit.patch):
        alone = score_answers(full_model_answer_logits(backbone.model, batch), batch)
    assert res.reliability == pytest.approx(float(alone.token_accuracy[0]))


class AlwaysPositive:
    def label(self, text: str) -> str:
        return "positive"


def test_convsent_sentiment_success_and_drawdown(backbone):
    records = load_records(DATA / "convsent.json")
    config = quiet(generation_tokens=3)
    result = Evaluator(backbone, Editor.untrained(backbone, 0.1), config, scorer=AlwaysPositive()).run(records)
    positive = sum(r.label == "positive" for r in records) / len(records)
    assert result.summary.sentiment_success == pytest.approx(positive)
    assert result.summary.kl_drawdown is not None and result.summary.kl_drawdown >= 0
    assert result.summary.fluency is not None
    assert all(r.generation is not None for r in result.records)
    assert result.summary.generalization is not None  # ConvSent records have rephrases


def test_editor_without_instructions_sees_plain_inputs(backbone, cf_records):
    editor = Editor.untrained(backbone, 1.0, use_instructions=False)
    items = Evaluator(backbone, editor, quiet(instruction=0)).render(cf_records)
    assert all(it.edit_input == r.prompt.strip() for it, r in zip(items, cf_records, strict=False))


def test_load_eval_editor(backbone, tmp_path):
    assert load_eval_editor("none", backbone) is None
    grad = load_eval_editor("gradient", backbone, 0.5)
    assert grad.name == "gradient-step(0.5)" and not grad.network.config.normalize
    Editor.untrained(backbone, 0.2, use_instructions=False).save_pretrained(tmp_path / "ed")
    loaded = load_eval_editor(str(tmp_path / "ed"), backbone)
    assert loaded.use_instructions is False
    assert loaded.patch_rank == DEFAULT_PATCH_RANK and grad.patch_rank is None
    assert load_eval_editor(str(tmp_path / "ed"), backbone, patch_rank=3).patch_rank == 3
    assert load_eval_editor("gradient", backbone, 0.5, patch_rank=2).patch_rank == 2


# ----- command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["easyedit_cf.json", "mend_zsre.json", "knowedit.json"])
def test_eval_cli_json_end_to_end(capsys, tiny_llama_dir, fixture, tmp_path):
    out_file = tmp_path / "summary.json"
    code, out, err = run_main(capsys, "eval", "--model", str(tiny_llama_dir), "--editor", "gradient",
                              "--step-size", "1", "--data", str(DATA / fixture), "--json",
                              "--out", str(out_file), "--no-progress", "--records-out",
                              str(tmp_path / "records.jsonl"))
    assert code == 0, err
    result = json.loads(out)
    assert RESULT_KEYS <= set(result)
    assert result["n"] == 3 and 0 <= result["reliability"] <= 1 and 0 <= result["locality"] <= 1
    assert result["editor"] == "gradient-step(1)" and result["edit_latency_ms"] > 0
    records = load_records(DATA / fixture)
    with_port = sum(bool(r.portability) for r in records)
    assert result["counts"]["portability"] == with_port
    assert (result["portability"] is None) == (with_port == 0)
    assert json.loads(out_file.read_text()) == result
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 3


def test_eval_cli_convsent_table_and_limit(capsys, tiny_gpt2_dir):
    code, out, err = run_main(capsys, "eval", "--model", str(tiny_gpt2_dir), "--editor", "none",
                              "--data", str(DATA / "convsent.json"), "--limit", "2",
                              "--instruction", "heldout", "--generation-tokens", "2", "--no-progress")
    assert code == 0, err
    assert "reliability" in out and "sentiment_success" in out and "editor unedited" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_eval_cli_data_folder_needs_a_task(capsys, tiny_llama_dir, tmp_path):
    code, _, err = run_main(capsys, "eval", "--model", str(tiny_llama_dir), "--editor", "none",
                            "--data", str(tmp_path))
    assert code == 2 and "--task" in err and len(err.strip().splitlines()) == 1


def test_eval_cli_data_folder_split(capsys, tiny_llama_dir, tmp_path):
    from tests.data.layout import make_data_dir

    data = make_data_dir(tmp_path / "data")
    code, out, err = run_main(capsys, "eval", "--model", str(tiny_llama_dir), "--editor", "none",
                              "--data", str(data), "--task", "zsre", "--split", "val", "--limit", "2",
                              "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == "zsre" and result["n"] == 2 and result["split"] == "val"
    assert result["reliability"] == result["reliability_pre"]


def test_eval_cli_missing_editor_is_one_line(capsys, tiny_llama_dir, tmp_path):
    code, _, err = run_main(capsys, "eval", "--model", str(tiny_llama_dir), "--editor",
                            str(tmp_path / "nope"), "--data", str(DATA / "easyedit_cf.json"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
