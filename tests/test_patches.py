"""Patches: hooks vs merged weights, exact undo, NaN rejection, per-thread edits, stacking."""
from __future__ import annotations

import json
import sys
import threading

import pytest
import torch

from instructedit.editing.editor import Editor, EditRequest
from instructedit.editing.merge import MODEL_MARKER, merge_patches
from instructedit.editing.patches import LayerPatch, NonFiniteEditError, Patch, PatchEngine, active_patches
from instructedit.model.backbone import load_backbone
from instructedit.model.generation import GenerationConfig, generate
from instructedit.scoring import full_model_answer_logits, score_answers, tokenize_answers

PROMPTS = ["The Eiffel Tower is located in", "The mother tongue of Danielle Darrieux is", "Rome is in"]


def _logits(backbone, texts=PROMPTS) -> torch.Tensor:
    backbone.tokenizer.padding_side = "right"
    enc = backbone.tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = backbone.model(**enc).logits
    return logits * enc["attention_mask"].unsqueeze(-1)


def _target_prob(backbone, prompt, target, patches=None) -> float:
    batch = tokenize_answers(backbone.tokenizer, [prompt], [target])
    with torch.no_grad(), PatchEngine.activate(patches):
        return float(score_answers(full_model_answer_logits(backbone.model, batch), batch).probability[0])


def _state(backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hooks_equal_merged_weights(family, request, tmp_path):
    backbone = request.getfixturevalue(family)
    editor = Editor.untrained(backbone, step_size=0.5)
    first = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome"))
    second = editor.edit(EditRequest("Rome is in", "Germany"), active=[first])
    state = _state(backbone)
    base = _logits(backbone)
    with PatchEngine.activate([first.patch, second.patch]):
        hooked = _logits(backbone)
    assert (hooked - base).abs().max() > 1e-2  # the edits do something

    out = merge_patches(backbone, [first, second], tmp_path / "merged")
    # the shared backbone is untouched: same weights, same outputs
    assert all(torch.equal(v, backbone.model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(_logits(backbone), base)
    marker = json.loads((out / MODEL_MARKER).read_text())
    assert marker["model_id"] == backbone.model_id and marker["base_source"] == backbone.source
    assert [e["target"] for e in marker["edits"]] == ["Rome", "Germany"]
    assert not list(tmp_path.glob(".*merge-*"))  # no temp folder left behind

    merged = load_backbone(str(out), device="cpu")
    assert merged.model_id == backbone.model_id
    torch.testing.assert_close(_logits(merged), hooked, atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError):
        merge_patches(backbone, [first], out)


def test_merge_from_quantized_backbone_uses_float_weights(tiny_gpt2_dir, gpt2, tmp_path):
    q4 = load_backbone(str(tiny_gpt2_dir), "4bit", device="cpu")
    edit = Editor.untrained(q4, step_size=0.5).edit(EditRequest("Rome is in", "Italy"))
    out = merge_patches(q4, [edit.patch], tmp_path / "merged4")
    merged = load_backbone(str(out), device="cpu")
    for name, layer in edit.patch.layers.items():
        expected = gpt2.adapter.weight_out_in(gpt2.module(name)) + layer.delta_weight()
        torch.testing.assert_close(merged.adapter.weight_out_in(merged.module(name)), expected,
                                   atol=1e-6, rtol=0)
    untouched = "transformer.h.0.mlp.c_fc"
    assert torch.equal(merged.module(untouched).weight, gpt2.module(untouched).weight)


def test_undo_is_bitwise_exact(llama):
    edit = Editor.untrained(llama, step_size=1.0).edit(EditRequest("Rome is in", "France"))
    base = _logits(llama)
    with PatchEngine.activate(edit.patch):
        assert active_patches() == (edit.patch,)
        edited = _logits(llama)
    assert not torch.equal(edited, base)
    assert active_patches() == ()
    assert torch.equal(_logits(llama), base)
    with pytest.raises(RuntimeError, match="boom"), PatchEngine.activate(edit.patch):
        raise RuntimeError("boom")
    assert active_patches() == ()
    assert torch.equal(_logits(llama), base)


def test_nan_edit_is_rejected(llama, monkeypatch):
    editor = Editor.untrained(llama, step_size=0.5)
    base = _logits(llama)
    with torch.no_grad():
        editor.network.log_lr[0] = float("nan")
    with pytest.raises(NonFiniteEditError, match="non-finite"):
        editor.edit(EditRequest("Rome is in", "France"))
    assert active_patches() == () and torch.equal(_logits(llama), base)

    editor = Editor.untrained(llama, step_size=0.5)
    original = editor.network.transform

    def nan_transform(name, u, d):
        u2, d2 = original(name, u, d)
        return u2, d2 * float("inf") if name.endswith("down_proj") else d2

    monkeypatch.setattr(editor.network, "transform", nan_transform)
    with pytest.raises(NonFiniteEditError):
        editor.edit(EditRequest("Rome is in", "France"))
    assert active_patches() == () and torch.equal(_logits(llama), base)
    bad = Patch({"model.layers.3.mlp.up_proj": LayerPatch(torch.full((1, 64), float("nan")),
                                                         torch.ones(1, 128), torch.tensor(1.0))})
    with pytest.raises(NonFiniteEditError):
        bad.check_finite()


@pytest.fixture
def fast_thread_switching():
    """Switch threads as often as possible so races show up."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_threads_see_only_their_own_edits(llama, fast_thread_switching):
    editor = Editor.untrained(llama, step_size=2.0)
    edit_a = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome"))
    edit_b = editor.edit(EditRequest("The Eiffel Tower is located in", "Berlin"))
    config = GenerationConfig(max_new_tokens=6)
    prompts = ["The Eiffel Tower is located in", "Rome"]  # different lengths: padding matters
    stacks = {"a": [edit_a.patch], "b": [edit_b.patch], "ab": [edit_a.patch, edit_b.patch], "none": []}
    reference = {}
    for key, stack in stacks.items():
        with PatchEngine.activate(stack):
            reference[key] = generate(llama, prompts, config)
    assert len({tuple(v) for v in reference.values()}) >= 3, reference  # the edits are visible

    barrier = threading.Barrier(len(stacks))
    seen: dict[str, list] = {key: [] for key in stacks}
    errors: list[BaseException] = []

    def worker(key: str) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(8):
                with PatchEngine.activate(stacks[key]):
                    seen[key].append(generate(llama, prompts, config))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(key,)) for key in stacks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for key in stacks:
        assert len(seen[key]) == 8
        assert all(out == reference[key] for out in seen[key]), (key, seen[key], reference[key])
    assert active_patches() == ()


def test_edits_stack(llama):
    editor = Editor.untrained(llama, step_size=0.5)
    first = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome"))
    request = EditRequest("The mother tongue of Danielle Darrieux is", "German")
    alone = editor.edit(request)
    stacked = editor.edit(request, active=[first])
    differs = [n for n in alone.patch.layers
               if not torch.allclose(alone.patch.layers[n].delta_weight(),
                                     stacked.patch.layers[n].delta_weight(), atol=1e-7)]
    assert differs, "the second edit ignored the active first edit"

    p1_base = _target_prob(llama, first.request.prompt, "Rome")
    p2_base = _target_prob(llama, request.prompt, "German")
    both = [first.patch, stacked.patch]
    assert _target_prob(llama, first.request.prompt, "Rome", both) > p1_base
    assert _target_prob(llama, request.prompt, "German", both) > p2_base
    with PatchEngine.activate(both):
        logits_both = _logits(llama)
    with PatchEngine.activate(first.patch):
        logits_first = _logits(llama)
    assert not torch.allclose(logits_both, logits_first)


def test_stacked_patches_are_folded_into_one_matmul_pair(tiny_llama_dir):
    """N active edits cost one factor pair per module, with the same outputs as N separate pairs."""
    from instructedit.editing.patches import combine_patches

    backbone = load_backbone(str(tiny_llama_dir))
    editor = Editor.untrained(backbone, step_size=0.5)
    edits = [editor.edit(EditRequest(p, t)) for p, t in
             [("The Eiffel Tower is located in", "Rome"), ("Rome is in", "Berlin"),
              ("The capital of France is", "Madrid")]]
    combined = combine_patches([e.patch for e in edits])
    assert len(combined) == 1
    name = next(iter(edits[0].patch.layers))
    rows = sum(e.patch.layers[name].u.shape[0] for e in edits)
    assert combined[0].layers[name].u.shape[0] == rows
    x = torch.randn(2, 5, edits[0].patch.layers[name].u.shape[1])
    separate = sum(e.patch.layers[name].output_delta(x) for e in edits)
    assert torch.allclose(combined[0].layers[name].output_delta(x), separate, atol=1e-5)


def _random_layer(rows: int, d_in: int = 12, d_out: int = 10, seed: int = 0,
                  batch: int | None = None) -> LayerPatch:
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    return LayerPatch(torch.randn(*lead, rows, d_in, generator=g),
                      torch.randn(*lead, rows, d_out, generator=g), torch.tensor(-0.5))


def _best_rank_k(full: torch.Tensor, k: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(full)
    return (u[:, :k] * s[:k]) @ vh[:k]


def test_truncation_is_the_best_rank_k_update():
    layer = _random_layer(6)
    full = layer.delta_weight()
    for k in (1, 3):
        truncated = layer.truncated(k)
        assert truncated.u.shape == (k, 12) and truncated.d.shape == (k, 10)
        torch.testing.assert_close(truncated.delta_weight(), _best_rank_k(full, k), atol=1e-4, rtol=1e-4)
    assert layer.truncated(6) is layer
    with pytest.raises(ValueError, match="at least 1"):
        layer.truncated(0)


def test_batched_truncation_cuts_each_row_on_its_own():
    batched = _random_layer(5, batch=3, seed=4)
    truncated = batched.truncated(2)
    assert truncated.u.shape == (3, 2, 12) and truncated.d.shape == (3, 2, 10)
    for row in range(3):
        single = LayerPatch(batched.u[row], batched.d[row], batched.scale)
        alone = LayerPatch(truncated.u[row], truncated.d[row], truncated.scale)
        torch.testing.assert_close(alone.delta_weight(), _best_rank_k(single.delta_weight(), 2),
                                   atol=1e-4, rtol=1e-4)


def test_editor_stores_edits_at_its_patch_rank(tiny_llama_dir):
    """A rank-k editor's edit is the best rank-k cut of the full edit, and still edits."""
    backbone = load_backbone(str(tiny_llama_dir))
    full_editor = Editor.untrained(backbone, step_size=1.0)
    assert full_editor.patch_rank is None  # a plain gradient step stays exact by default
    request = EditRequest("The Eiffel Tower is located in", "Rome")
    full = full_editor.edit(request)
    cut = full_editor.with_patch_rank(1).edit(request)
    for name, layer in cut.patch.layers.items():
        assert layer.u.shape[0] == 1
        reference = full.patch.layers[name].truncated(1).delta_weight()
        torch.testing.assert_close(layer.delta_weight(), reference, atol=1e-5, rtol=1e-3)
    assert cut.patch.nbytes() < full.patch.nbytes() / 4
    base = _target_prob(backbone, request.prompt, "Rome")
    assert _target_prob(backbone, request.prompt, "Rome", [cut.patch]) > base
    with pytest.raises(ValueError, match="patch_rank"):
        full_editor.with_patch_rank(0)


def test_stack_patches_gives_each_row_its_own_unbatched_output():
    import torch

    from instructedit.editing.patches import LayerPatch, Patch, stack_patches

    torch.manual_seed(0)
    a = Patch({"m": LayerPatch(torch.randn(1, 5), torch.randn(1, 3), torch.tensor(2.0))})
    b = Patch({"m": LayerPatch(torch.randn(3, 5), torch.randn(3, 3), torch.tensor(-0.5)),
               "n": LayerPatch(torch.randn(2, 4), torch.randn(2, 2), torch.tensor(1.0))})
    stacked = stack_patches([a, b])
    x = torch.randn(2, 7, 5)
    out = stacked.layers["m"].output_delta(x)
    torch.testing.assert_close(out[0], a.layers["m"].output_delta(x[0]))
    torch.testing.assert_close(out[1], b.layers["m"].output_delta(x[1]))
    # row 0 has no patch of "n": it adds nothing there
    y = torch.randn(2, 7, 4)
    assert stacked.layers["n"].output_delta(y)[0].abs().max() == 0
    torch.testing.assert_close(stacked.layers["n"].output_delta(y)[1], b.layers["n"].output_delta(y[1]))
