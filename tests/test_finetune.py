"""Constrained fine-tuning as an editor: the edit learns the target, the norm bound holds, the
patch is exactly the weight change of fine-tuning the weights themselves, the base weights are
never touched, batches equal single edits, load_editor / Evaluator / eval CLI; tiny models."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from instructedit.bench.config import FinetuneConfig
from instructedit.bench.finetune import compare_with_finetuning
from instructedit.data import load_records
from instructedit.editing.editor import EditError, Editor, EditRequest
from instructedit.editing.editors import load_editor
from instructedit.editing.finetune import FineTuneConfig, FineTuneEditor, delta_patch
from instructedit.editing.patches import PatchEngine, active_patches
from instructedit.evaluate import EvalConfig, Evaluator, load_eval_editor
from instructedit.model.adapters import intervene
from instructedit.model.backbone import load_backbone
from instructedit.scoring import full_model_answer_logits, score_answers, tokenize_answers
from tests.cli_helpers import run_main
from tests.test_rome import DANIELLE, EIFFEL, _logits  # the same facts and logits helper as ROME's

DATA = Path(__file__).parent / "data"
FAST = FineTuneConfig(lr=1e-2, max_steps=6, linf=None)
FIXED = FineTuneConfig(lr=1e-2, max_steps=4, linf=5e-3, stop_when_greedy=False)


def _target_logprob(backbone, prompt: str, target: str, patch=None) -> float:
    batch = tokenize_answers(backbone.tokenizer, [prompt], [target]).to(backbone.device)
    with torch.no_grad(), PatchEngine.activate(patch):
        return float(score_answers(full_model_answer_logits(backbone.model, batch), batch).log_prob[0])


def _state(backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def _same_state(backbone, state) -> bool:
    now = backbone.model.state_dict()
    return set(now) == set(state) and all(torch.equal(v, now[k]) for k, v in state.items())


def _weight_fine_tuning(backbone, names, prompt: str, target: str, config: FineTuneConfig):
    """The reference: Adam on the weights of a copy, clamped to ``linf`` around the originals
    (what bench/finetune.py did before the editor); returns the (out, in) weight changes."""
    model = copy.deepcopy(backbone.model)
    modules = [model.get_submodule(n) for n in names]
    weights = [m.weight for m in modules]
    originals = [w.detach().clone() for w in weights]
    batch = tokenize_answers(backbone.tokenizer, [prompt], [target]).to(backbone.device)
    for w in weights:
        w.requires_grad_(True)
    optimizer = torch.optim.Adam(weights, lr=config.lr)
    with torch.enable_grad(), PatchEngine.activate(None):
        for _ in range(config.max_steps):
            optimizer.zero_grad()
            score_answers(full_model_answer_logits(model, batch), batch).mean_nll.sum().backward()
            optimizer.step()
            with torch.no_grad():
                for w, w0 in zip(weights, originals, strict=True):
                    w.copy_(w0 + (w - w0).clamp_(-config.linf, config.linf))
    changes = {}
    for name, module, w0 in zip(names, modules, originals, strict=True):
        before = copy.deepcopy(module)
        before.weight = torch.nn.Parameter(w0)
        adapter = backbone.adapter
        changes[name] = adapter.weight_out_in(module) - adapter.weight_out_in(before)
    return changes


# ----- the editor -----------------------------------------------------------------------------
def test_edit_raises_the_target_probability(backbone):
    editor = FineTuneEditor(backbone, FAST)
    assert (editor.name, editor.use_instructions, editor.patch_rank) == ("finetune", False, None)
    assert editor.module_names == backbone.edited_module_names()
    request = EditRequest(EIFFEL[0] + "  ", EIFFEL[2], task="counterfact", instruction=0)
    edit = editor.edit(request)
    assert edit.editor_name == "finetune" and edit.wrapped_input == EIFFEL[0]  # plain prompt
    assert list(edit.patch.layers) == editor.module_names and edit.latency_ms > 0
    before = _target_logprob(backbone, EIFFEL[0], EIFFEL[2])
    after = _target_logprob(backbone, EIFFEL[0], EIFFEL[2], edit.patch)
    assert after > before + 0.5


def test_norm_bound_holds(llama):
    editor = FineTuneEditor(llama, FIXED)
    result = editor.fine_tune([EIFFEL[0]], [EIFFEL[2]])
    assert result.steps == [FIXED.max_steps] and result.nll_after[0] < result.nll_before[0]
    patch = result.patch(0)
    largest = max(float(layer.delta_weight().abs().max()) for layer in patch.layers.values())
    assert largest <= FIXED.linf * (1 + 1e-6)
    assert largest == pytest.approx(FIXED.linf)  # the bound was reached: it did constrain


def test_patch_is_the_weight_change_of_fine_tuning_the_weights(backbone):
    editor = FineTuneEditor(backbone, FIXED)
    state = _state(backbone)
    edit = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]))
    reference = _weight_fine_tuning(backbone, editor.module_names, EIFFEL[0], EIFFEL[2], FIXED)
    for name, change in reference.items():
        assert change.abs().max() > 0
        torch.testing.assert_close(edit.patch.layers[name].delta_weight(), change, atol=2e-6, rtol=1e-4)
    assert _same_state(backbone, state)


def test_exact_factors_and_rank_truncation():
    g = torch.Generator().manual_seed(0)
    wide, tall = torch.randn(6, 10, generator=g), torch.randn(10, 6, generator=g)
    patch = delta_patch({"wide": wide, "tall": tall})
    assert patch.layers["wide"].u.shape == (6, 10) and patch.layers["tall"].u.shape == (6, 6)
    x = torch.randn(3, 10, generator=g)
    assert torch.equal(patch.layers["wide"].output_delta(x), x @ wide.t())   # bitwise exact
    assert torch.equal(patch.layers["wide"].delta_weight(), wide)
    assert torch.equal(patch.layers["tall"].delta_weight(), tall)
    low = delta_patch({"wide": wide}, rank=2).layers["wide"]
    assert low.u.shape == (2, 10)
    u, s, vh = torch.linalg.svd(wide)
    torch.testing.assert_close(low.delta_weight(), (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5, rtol=1e-5)


def test_rank_config_truncates_the_patch(llama):
    edit = FineTuneEditor(llama, replace(FAST, rank=2)).edit(EditRequest(EIFFEL[0], EIFFEL[2]))
    assert all(layer.u.shape[0] == 2 for layer in edit.patch.layers.values())


def test_base_weights_bitwise_unchanged_and_undo(backbone):
    editor = FineTuneEditor(backbone, FAST)
    state, base = _state(backbone), _logits(backbone)
    edit = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]))
    assert _same_state(backbone, state)
    with PatchEngine.activate(edit.patch):
        assert not torch.equal(_logits(backbone), base)
    assert torch.equal(_logits(backbone), base) and active_patches() == ()
    with intervene(backbone.model, {}):  # no hook left behind
        assert torch.equal(_logits(backbone), base)
    assert _same_state(backbone, state)


@pytest.mark.parametrize("target", ["", "   "])
def test_empty_target_raises_and_changes_nothing(llama, target):
    editor = FineTuneEditor(llama, FAST)
    state, base = _state(llama), _logits(llama)
    with pytest.raises(EditError, match="target is empty"):
        editor.edit(EditRequest(EIFFEL[0], target))
    assert _same_state(llama, state) and torch.equal(_logits(llama), base) and active_patches() == ()


def test_edits_stack(llama):
    editor = FineTuneEditor(llama, FIXED)
    first = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]))
    second = editor.edit(EditRequest(DANIELLE[0], DANIELLE[2]), active=[first])
    alone = editor.edit(EditRequest(DANIELLE[0], DANIELLE[2]))
    name = editor.module_names[0]
    assert not torch.allclose(second.patch.layers[name].delta_weight(), alone.patch.layers[name].delta_weight())
    base = _logits(llama)
    with PatchEngine.activate([first.patch, second.patch]):
        both = _logits(llama)
    with PatchEngine.activate(first.patch):
        one = _logits(llama)
    assert not torch.equal(both, one) and not torch.equal(one, base)
    assert torch.equal(_logits(llama), base)


def test_batch_equals_one_by_one(gpt2):
    editor = FineTuneEditor(gpt2, replace(FAST, max_steps=8))
    both = editor.patches([EIFFEL, DANIELLE])
    single = [editor.patches([r])[0] for r in (EIFFEL, DANIELLE)]
    steps = [editor.fine_tune([r[0]], [r[2]]).steps[0] for r in (EIFFEL, DANIELLE)]
    assert editor.fine_tune([EIFFEL[0], DANIELLE[0]], [EIFFEL[2], DANIELLE[2]]).steps == steps
    for batched, alone in zip(both, single, strict=True):
        for name, layer in alone.layers.items():
            torch.testing.assert_close(batched.layers[name].delta_weight(), layer.delta_weight(),
                                       atol=1e-6, rtol=1e-4)


def test_one_layer(llama):
    editor = FineTuneEditor(llama, replace(FAST, layer=-1))
    top = llama.adapter.num_layers(llama.model) - 1
    assert editor.module_names == [llama.adapter.mlp_out_name(top)]
    edit = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]))
    assert list(edit.patch.layers) == editor.module_names


@pytest.mark.parametrize("bad", [dict(lr=0), dict(max_steps=0), dict(linf=0.0), dict(rank=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        FineTuneConfig(**bad)


def test_quantized_backbone(tiny_llama_dir):
    quantized = load_backbone(str(tiny_llama_dir), "4bit", device="cpu")
    editor = FineTuneEditor(quantized, FAST)
    assert type(quantized.module(editor.module_names[0])).__name__ == "Linear4bit"
    state, base = _state(quantized), _logits(quantized)
    edit = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]))
    edit.patch.check_finite()
    assert (_target_logprob(quantized, EIFFEL[0], EIFFEL[2], edit.patch)
            > _target_logprob(quantized, EIFFEL[0], EIFFEL[2]))
    assert _same_state(quantized, state) and torch.equal(_logits(quantized), base)


# ----- loading, evaluation, bench -------------------------------------------------------------
def test_load_editor_by_name(llama):
    editor = load_editor("finetune", llama)
    assert isinstance(editor, FineTuneEditor) and editor.patch_rank is None
    assert editor.config == FineTuneConfig()
    assert load_editor(" FineTune ", llama, patch_rank=4).patch_rank == 4
    assert isinstance(load_eval_editor("finetune", llama), FineTuneEditor)


def test_evaluator_runs_it(llama):
    records = load_records(DATA / "rome_cf.json")
    editor = FineTuneEditor(llama, FAST)
    result = Evaluator(llama, editor, EvalConfig(progress=False, batch_size=2)).run(records)
    assert result.summary.n == len(records)
    for res in result.records:
        assert res.latency_ms > 0 and res.instruction is None
        assert res.target_logprob_post > res.target_logprob_pre


def test_eval_cli_takes_it_by_name(capsys, tiny_gpt2_dir):
    code, out, err = run_main(capsys, "eval", "--model", str(tiny_gpt2_dir), "--editor", "finetune",
                              "--data", str(DATA / "rome_cf.json"), "--limit", "2", "--json",
                              "--no-progress", "--generation-tokens", "2")
    assert code == 0, err
    result = json.loads(out)
    assert result["editor"] == "finetune" and result["n"] == 2 and result["use_instructions"] is False


def test_bench_measures_fine_tuning_as_eval_does(llama):
    """Section 4 of bench measures the editor and fine-tuning through the evaluator of ``eval``
    (same records, same result types), one record per pass; fine-tuning is the finetune editor
    on the editor's matrices with the bench's settings, and its steps are kept for the report."""
    records = load_records(DATA / "rome_cf.json")[:2]
    editor = Editor.untrained(llama, step_size=1.0)
    config = FinetuneConfig(lr=FAST.lr, max_steps=3, linf=None)
    result = compare_with_finetuning(editor, records, config)
    assert result["records"] == 2 and result["finetune"]["steps"]["n"] == 2
    assert result["finetune"]["hit_step_cap"] <= 2 and result["finetune"]["config"]["max_steps"] == 3
    eval_config = EvalConfig(instruction=0, batch_size=1, sentiment=False, plain=False, progress=False)
    same = {"editor": editor,
            "finetune": FineTuneEditor(llama, FineTuneConfig(lr=FAST.lr, max_steps=3, linf=None),
                                       module_names=editor.module_names)}
    for method, measured in same.items():
        summary = Evaluator(llama, measured, eval_config).run(records).summary
        for name in ("reliability", "generalization", "locality"):
            assert result[method][name] == pytest.approx(getattr(summary, name), abs=1e-4), (method, name)
        assert result[method]["n"] == 2 and result[method]["latency_ms"]["min"] > 0


def test_fine_tuning_edits_records_without_a_subject(llama):
    """Fine-tuning does not need a subject: the evaluator edits every record with it (ROME skips
    records whose subject is not in their prompt)."""
    from instructedit.data.records import EditRecord
    from instructedit.editing.finetune import FineTuneConfig, FineTuneEditor

    record = EditRecord(id="x", task="counterfact", prompt="The best drink is", target_new="tea",
                        subject="")
    editor = FineTuneEditor(llama, FineTuneConfig(max_steps=3, linf=None))
    result = Evaluator(llama, editor, EvalConfig(progress=False, plain=False)).run([record])
    row = result.records[0]
    assert row.target_logprob_post > row.target_logprob_pre + 0.1  # edited, not skipped
