"""ROME: the rank-one update maps k* to v*, exact undo, stacking, subject errors, batches,
quantized backbones, the key covariance (editing/covariance.py) and its cache; one real-model edit (slow)."""
from __future__ import annotations

import pytest
import torch

from instructedit.editing.covariance import estimate_key_covariance, key_covariance
from instructedit.editing.editor import EditError, EditRequest
from instructedit.editing.patches import PatchEngine, active_patches
from instructedit.editing.rome import (
    RomeConfig,
    RomeEditor,
    RomeRequest,
    SubjectError,
    compute_rome,
    compute_rome_patches,
    rank_one_patch,
    subject_span,
)
from instructedit.model.backbone import load_backbone

FAST = RomeConfig(covariance="identity", n_prefixes=2, prefix_tokens=4, v_steps=6)
EIFFEL = ("The Eiffel Tower is located in", "Eiffel Tower", "Rome")
DANIELLE = ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English")
PROMPTS = ["The Eiffel Tower is located in", "The mother tongue of Danielle Darrieux is", "Rome is in"]


def _logits(backbone, texts=PROMPTS) -> torch.Tensor:
    rows = [backbone.tokenizer(t)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [backbone.tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    with torch.no_grad():
        return backbone.model(input_ids=ids, attention_mask=mask).logits


def _random_covariance(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 4 * n, generator=g)
    return a @ a.t() / (4 * n) + 0.1 * torch.eye(n)


def _forward_module(backbone, name: str, x: torch.Tensor, patches=None) -> torch.Tensor:
    with torch.no_grad(), PatchEngine.activate(patches):
        return backbone.module(name)(x.unsqueeze(0)).float()[0]


@pytest.mark.parametrize("with_covariance", [False, True])
def test_rank_one_update_maps_key_to_value(backbone, with_covariance):
    name = backbone.adapter.mlp_out_name(1)
    n_in, n_out = backbone.adapter.in_out_features(backbone.module(name))
    cov = _random_covariance(n_in) if with_covariance else "identity"
    result = compute_rome(backbone, [EIFFEL], FAST, cov)[0]
    assert result.module == name and result.delta.norm() > 0
    layer = result.patch.layers[name]
    assert layer.u.shape == (1, n_in) and layer.d.shape == (1, n_out) and float(layer.scale) == 1.0
    # W' k* = v*, through the hook (the module's own forward, bias included)
    torch.testing.assert_close(_forward_module(backbone, name, result.key, result.patch), result.value,
                               atol=1e-5, rtol=1e-5)
    # ... and through the (out, in) weights: dW = delta (C^-1 k)^T / (k^T C^-1 k)
    c = result.key.double() if cov == "identity" else torch.linalg.solve(cov.double(), result.key.double())
    expected = torch.outer(result.delta.double(), c) / torch.dot(c, result.key.double())
    torch.testing.assert_close(layer.delta_weight().double(), expected, atol=1e-6, rtol=1e-5)
    w_new = backbone.adapter.weight_out_in(backbone.module(name)) + layer.delta_weight()
    base = _forward_module(backbone, name, result.key) - backbone.adapter.weight_out_in(
        backbone.module(name)) @ result.key
    torch.testing.assert_close(w_new @ result.key + base, result.value, atol=1e-5, rtol=1e-5)
    # a key orthogonal to C^-1 k* is left exactly where it was
    other = torch.randn(n_in, generator=torch.Generator().manual_seed(1)).double()
    other = (other - torch.dot(other, c) / torch.dot(c, c) * c).float()
    torch.testing.assert_close(_forward_module(backbone, name, other, result.patch),
                               _forward_module(backbone, name, other), atol=1e-5, rtol=1e-5)


def test_rank_one_patch_rejects_a_zero_key():
    with pytest.raises(EditError, match="degenerate"):
        rank_one_patch("m", torch.zeros(8), torch.ones(4))


def test_value_optimisation_lowers_the_target_nll(backbone):
    result = compute_rome(backbone, [EIFFEL], RomeConfig(covariance="identity", n_prefixes=2,
                                                         prefix_tokens=4, v_steps=10))[0]
    assert result.nll_after < result.nll_before
    assert result.delta.norm() <= 4.0 * (result.value - result.delta).norm() * 1.0001 + 1e-6


def test_editor_interface_and_undo_is_bitwise(backbone):
    editor = RomeEditor(backbone, FAST)
    assert (editor.name, editor.use_instructions, editor.patch_rank) == ("rome", False, 1)
    assert editor.layer == backbone.adapter.num_layers(backbone.model) // 3
    assert editor.module_names == [backbone.adapter.mlp_out_name(editor.layer)]
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    base = _logits(backbone)
    edit = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]), subject=EIFFEL[1])
    assert edit.editor_name == "rome" and edit.wrapped_input == EIFFEL[0]
    assert list(edit.patch.layers) == editor.module_names and edit.latency_ms > 0
    with PatchEngine.activate(edit.patch):
        edited = _logits(backbone)
    assert not torch.equal(edited, base)
    assert torch.equal(_logits(backbone), base)  # leaving the context: bitwise the unedited outputs
    assert active_patches() == ()
    assert all(torch.equal(v, backbone.model.state_dict()[k]) for k, v in state.items())


def test_topic_is_the_default_subject(llama):
    editor = RomeEditor(llama, FAST)
    by_topic = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2], topic=EIFFEL[1]))
    by_arg = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]), subject=EIFFEL[1])
    layer = editor.module_names[0]
    torch.testing.assert_close(by_topic.patch.layers[layer].d, by_arg.patch.layers[layer].d)


def test_edits_stack(backbone):
    editor = RomeEditor(backbone, FAST)
    name = editor.module_names[0]
    first = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]), subject=EIFFEL[1])
    second = editor.edit(EditRequest(DANIELLE[0], DANIELLE[2]), subject=DANIELLE[1], active=[first])
    alone = editor.edit(EditRequest(DANIELLE[0], DANIELLE[2]), subject=DANIELLE[1])
    assert not torch.allclose(second.patch.layers[name].d, alone.patch.layers[name].d)
    # the second edit was computed on top of the first: with both active, W'' k2* = v2*
    result = compute_rome(backbone, [DANIELLE], editor._config(), "identity", active=[first.patch])[0]
    torch.testing.assert_close(_forward_module(backbone, name, result.key, [first.patch, second.patch]),
                               result.value, atol=1e-5, rtol=1e-5)
    base = _logits(backbone)
    with PatchEngine.activate([first.patch, second.patch]):
        both = _logits(backbone)
    with PatchEngine.activate([first.patch]):
        one = _logits(backbone)
    assert not torch.equal(both, one) and not torch.equal(one, base)
    assert torch.equal(_logits(backbone), base)


@pytest.mark.parametrize("subject,topic,match", [
    ("Louvre", None, "does not occur in the prompt"),
    (None, None, "ROME needs the subject"),
    ("   ", None, "ROME needs the subject"),
    (None, "Colosseum", "does not occur in the prompt"),
])
def test_subject_errors_change_nothing(llama, subject, topic, match):
    editor = RomeEditor(llama, FAST)
    state = {k: v.clone() for k, v in llama.model.state_dict().items()}
    base = _logits(llama)
    with pytest.raises(SubjectError, match=match) as info:
        editor.edit(EditRequest(EIFFEL[0], EIFFEL[2], topic=topic), subject=subject)
    assert isinstance(info.value, EditError)
    assert torch.equal(_logits(llama), base) and active_patches() == ()
    assert all(torch.equal(v, llama.model.state_dict()[k]) for k, v in state.items())


def test_bad_requests_are_rejected_first(llama):
    with pytest.raises(EditError, match="target is empty"):
        RomeEditor(llama, FAST).edit(EditRequest(EIFFEL[0], " "), subject=EIFFEL[1])
    with pytest.raises(SubjectError, match="does not occur"):
        compute_rome_patches(llama, [EIFFEL, ("Rome is in", "Paris", "France")], FAST, "identity")


def test_subject_span_finds_the_tokens(llama):
    tok = llama.tokenizer
    prompt = "The Eiffel Tower is located in"
    start, end = subject_span(tok, prompt, "Eiffel Tower")
    ids = tok(prompt)["input_ids"]
    assert tok.decode(ids[start:end]).strip() == "Eiffel Tower"
    assert subject_span(tok, prompt, "eiffel tower") == (start, end)  # case-insensitive fallback


def test_batch_equals_one_by_one(gpt2):
    both = compute_rome_patches(gpt2, [EIFFEL, DANIELLE], FAST, "identity")
    single = [compute_rome_patches(gpt2, [r], FAST, "identity")[0] for r in (EIFFEL, DANIELLE)]
    assert len(both) == 2
    for batched, alone in zip(both, single, strict=True):
        name = next(iter(alone.layers))
        torch.testing.assert_close(batched.layers[name].u, alone.layers[name].u, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(batched.layers[name].d, alone.layers[name].d, atol=1e-4, rtol=1e-3)
    requests = [RomeRequest(*EIFFEL), RomeRequest(*DANIELLE)]
    assert len(RomeEditor(gpt2, FAST).patches(requests, batch_size=1)) == 2


@pytest.mark.parametrize("quant,layer_class", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_edit(tiny_model_dir, quant, layer_class):
    quantized = load_backbone(str(tiny_model_dir), quant, device="cpu")
    editor = RomeEditor(quantized, FAST)
    name = editor.module_names[0]
    assert type(quantized.module(name)).__name__ == layer_class
    base = _logits(quantized)
    edit = editor.edit(EditRequest(EIFFEL[0], EIFFEL[2]), subject=EIFFEL[1])
    edit.patch.check_finite()
    result = compute_rome(quantized, [EIFFEL], editor._config(), "identity")[0]
    dtype = quantized.model.get_input_embeddings().weight.dtype
    torch.testing.assert_close(_forward_module(quantized, name, result.key.to(dtype), result.patch),
                               result.value, atol=0.05, rtol=0.05)
    with PatchEngine.activate(edit.patch):
        assert not torch.equal(_logits(quantized), base)
    assert torch.equal(_logits(quantized), base)


def test_key_covariance_is_the_second_moment_and_is_cached(llama, tmp_path, monkeypatch):
    layer = 1
    name = llama.adapter.mlp_out_name(layer)
    texts = ["The Eiffel Tower is located in Paris .", "Rome is in Italy ."]
    moment, n_tokens = estimate_key_covariance(llama, layer, texts)
    keys = []
    PatchEngine.for_model(llama.model, [name])
    for text in texts:
        ids = torch.tensor([llama.tokenizer(text)["input_ids"]])
        with torch.no_grad(), PatchEngine.capture([name]) as cap:
            llama.model(input_ids=ids)
        keys.append(cap.inputs[name][0])
    keys = torch.cat(keys).double()
    assert n_tokens == keys.shape[0]
    torch.testing.assert_close(moment.double(), keys.t() @ keys / n_tokens, atol=1e-5, rtol=1e-4)

    config = RomeConfig(covariance="auto", data_dir=str(tmp_path / "no-data"), cov_texts=4)
    first = key_covariance(llama, layer, config, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1 and "generated" in files[0].name and "layer1" in files[0].name
    assert torch.allclose(first, first.t()) and torch.linalg.eigvalsh(first.double()).min() > 0

    import instructedit.editing.covariance as covariance

    monkeypatch.setattr(covariance, "_COV_MEMORY", type(covariance._COV_MEMORY)())
    monkeypatch.setattr(covariance, "estimate_key_covariance", lambda *a, **k: pytest.fail("recomputed"))
    assert torch.equal(key_covariance(llama, layer, config, cache_dir=tmp_path / "cache"), first)
    assert key_covariance(llama, layer, RomeConfig(covariance="identity")) is None


def test_config_is_validated():
    for bad in ({"covariance": "nope"}, {"v_steps": 0}, {"kl_template": "no subject"},
                {"clamp_norm_factor": 0}):
        with pytest.raises(ValueError):
            RomeConfig(**bad)


@pytest.mark.slow
def test_real_model_rome_edit():
    from instructedit.model.generation import GenerationConfig, generate

    backbone = load_backbone("smollm2-135m", device="cpu")
    editor = RomeEditor(backbone)
    prompt, louvre = "The Eiffel Tower is located in the city of", "The Louvre is located in the city of"
    edit = editor.edit(EditRequest(prompt, "Rome"), subject="Eiffel Tower")
    config = GenerationConfig(max_new_tokens=8)
    before = generate(backbone, [prompt, louvre], config)
    with PatchEngine.activate(edit.patch):
        after = generate(backbone, [prompt, louvre], config)
    assert "Rome" not in before[0] and "Rome" in after[0], (before, after)
    assert "Rome" in before[1] or "Rome" not in after[1], (before, after)
    assert generate(backbone, [prompt, louvre], config) == before  # undo
