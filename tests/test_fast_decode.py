"""The lean greedy decoder returns model.generate's tokens: single prompts, left-padded batches,
active (and per-row) edits, end tokens; the packed 4-bit route leaves weights and gradients alone."""
from __future__ import annotations

import copy

import pytest
import torch

from instructedit.editing.editor import Editor, EditRequest
from instructedit.editing.patches import PatchEngine
from instructedit.model import packed4bit
from instructedit.model.backbone import load_backbone
from instructedit.model.decoding import eos_ids, greedy_new_tokens, supports_lean_decoding
from instructedit.model.generation import GenerationConfig, _left_padded, generate, generate_ids

PROMPTS = ["The Eiffel Tower is located in", "Rome is in", "The mother tongue of Danielle Darrieux is"]
TOKENS = 12


def _tokens(backbone, prompts, tokens=TOKENS, lean=True, **kwargs) -> torch.Tensor:
    enc = _left_padded(backbone.tokenizer, prompts, True, backbone.device)
    return greedy_new_tokens(backbone.model, enc["input_ids"], enc["attention_mask"], tokens,
                             backbone.tokenizer.pad_token_id, lean=lean, **kwargs)


def _edits(backbone):
    editor = Editor.untrained(backbone, step_size=0.5)
    first = editor.edit(EditRequest(PROMPTS[0], "Rome"))
    second = editor.edit(EditRequest(PROMPTS[1], "Berlin"), active=[first])
    return [first.patch, second.patch]


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["single", "left-padded batch"])
@pytest.mark.parametrize("edited", [False, True], ids=["unedited", "edited"])
def test_lean_tokens_equal_generate(backbone, prompts, edited):
    assert supports_lean_decoding(backbone.model)
    patches = _edits(backbone) if edited else []
    with PatchEngine.activate(patches):
        reference = _tokens(backbone, prompts, lean=False)
        lean = _tokens(backbone, prompts)
    assert reference.shape[1] == TOKENS
    assert torch.equal(lean, reference)
    if edited:  # the edits reach the lean loop's forwards
        assert not torch.equal(lean, _tokens(backbone, prompts))


def test_lean_tokens_equal_generate_under_per_row_edits(llama):
    """The serving batcher's case: a batched patch, one edit per row of a padded batch."""
    from instructedit.serving.batcher import request_rows_patch

    first, second = _edits(llama)
    rows = request_rows_patch([(1, [first]), (1, []), (1, [second])])
    with PatchEngine.activate(rows):
        assert torch.equal(_tokens(llama, PROMPTS), _tokens(llama, PROMPTS, lean=False))


def test_end_tokens_pad_finished_rows_and_stop_when_all_ended(backbone, monkeypatch):
    # an end token that the first prompt produces at step 2 (other rows may produce it later or never)
    eos = int(_tokens(backbone, PROMPTS[:1])[0, 2])
    monkeypatch.setattr(backbone.model.generation_config, "eos_token_id", eos)
    assert eos_ids(backbone.model) == [eos]
    alone = _tokens(backbone, PROMPTS[:1])  # one row: stops right after its end token
    assert alone.shape[1] <= 3 and alone[0, -1] == eos and eos not in alone[0, :-1].tolist()
    assert torch.equal(alone, _tokens(backbone, PROMPTS[:1], lean=False))
    pad = backbone.tokenizer.pad_token_id
    lean, reference = _tokens(backbone, PROMPTS), _tokens(backbone, PROMPTS, lean=False)
    assert torch.equal(lean, reference)
    ended = 0
    for row in lean.tolist():  # after a row's end token: padding only
        if eos in row:
            ended += 1
            assert all(t == pad for t in row[row.index(eos) + 1:]), row
    assert ended >= 1
    assert generate_ids(backbone, PROMPTS, TOKENS) == generate_ids(backbone, PROMPTS, TOKENS, lean=False)
    # min_new_tokens suppresses the end token (the benchmark's exact-length runs)
    forced = _tokens(backbone, PROMPTS[:1], min_new_tokens=TOKENS)
    assert forced.shape[1] == TOKENS and eos not in forced[0].tolist()
    assert torch.equal(forced, _tokens(backbone, PROMPTS[:1], lean=False, min_new_tokens=TOKENS))


def test_generate_texts_are_the_same_on_both_paths(backbone):
    patches = _edits(backbone)
    for chat in (False, True):
        with PatchEngine.activate(patches):
            lean = generate(backbone, PROMPTS, GenerationConfig(max_new_tokens=8, chat=chat))
            reference = generate(backbone, PROMPTS, GenerationConfig(max_new_tokens=8, chat=chat, lean=False))
        assert lean == reference


def test_zero_tokens_and_unusual_generation_configs(llama, monkeypatch):
    assert _tokens(llama, PROMPTS, tokens=0).shape == (3, 0)
    # anything beyond plain greedy decoding goes through generate itself
    monkeypatch.setattr(llama.model.generation_config, "repetition_penalty", 1.3)
    assert not supports_lean_decoding(llama.model)
    assert torch.equal(_tokens(llama, PROMPTS), _tokens(llama, PROMPTS, lean=False))


# ----- the packed 4-bit route -------------------------------------------------------------------
needs_kernel = pytest.mark.skipif(not packed4bit.available(), reason="no packed 4-bit CPU kernel here")


@pytest.fixture(scope="module")
def llama4(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), "4bit", device="cpu")


def plain_and_routed(layer, x):
    """The layer's output on its own route and inside the decoding route (where a gradient being
    recorded must send it back to its own route)."""
    with torch.no_grad():
        plain = layer(x)
        with packed4bit.decode_route():
            fast = layer(x)
            with torch.enable_grad():
                assert torch.equal(layer(x), plain)  # gradients recorded: the layer's own route
    return plain, fast


@needs_kernel
def test_packed_route_only_inside_no_grad_decoding(llama4):
    model = llama4.model
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    stored = [(m.weight.data.clone(), m.weight.quant_state.absmax.clone()) for m in layers]
    assert packed4bit.enable(model) == len(layers) and packed4bit.enable(model) == len(layers)
    assert packed4bit.extra_bytes(model) > 0 and packed4bit.route_kind(model) in ("native", "op")
    for module, (data, absmax) in zip(layers, stored, strict=True):  # stored weights untouched
        assert torch.equal(module.weight.data, data) and torch.equal(module.weight.quant_state.absmax, absmax)
        assert not getattr(module.weight.quant_state, "packing_format_for_cpu", False)
    layer = layers[0]
    x = torch.randn(2, 3, layer.in_features, dtype=torch.bfloat16)
    plain, fast = plain_and_routed(layer, x)
    assert fast.shape == plain.shape and not torch.equal(fast, plain)  # another kernel ...
    assert torch.allclose(fast.float(), plain.float(), atol=0.05, rtol=0.05)  # ... same weights
    clone = copy.deepcopy(layer)  # a copy's routed forward is the copy's own
    assert clone.forward.__self__ is clone
    with torch.no_grad(), packed4bit.decode_route():
        assert torch.equal(clone(x), fast)


@needs_kernel
def test_packed_decoding_agrees_with_generate_and_keeps_gradients(tiny_llama_dir, llama4):
    """4-bit lean decoding is generate's exactly unless the packed kernel is asked for; through it,
    it mostly agrees with generate (bf16 rounding differs), and gradients after it are those of a
    model that never decoded (the CPU 4-bit trap)."""
    from tests.test_backbone import _output_gradients

    names = ["model.layers.1.mlp.gate_proj", "model.layers.2.mlp.down_proj"]
    fresh = load_backbone(str(tiny_llama_dir), "4bit", device="cpu")
    before = _output_gradients(fresh, names)
    exact = _tokens(llama4, PROMPTS)  # the default route (evaluation, the command line)
    lean, reference = _tokens(llama4, PROMPTS, packed_4bit=True), _tokens(llama4, PROMPTS, lean=False)
    assert torch.equal(exact, reference)
    assert packed4bit.route_kind(llama4.model) != "none"
    assert lean.shape == reference.shape and (lean == reference).float().mean() >= 0.5
    after = _output_gradients(llama4, names)
    for name in names:
        assert torch.equal(after[name], before[name]), name


# ----- the benchmark of the decoding paths ------------------------------------------------------
def test_decoding_benchmark_and_its_report(llama):
    from instructedit.bench.gen_speed import flops_per_token, measure_decoding, weight_bytes_per_token
    from instructedit.bench.report import decoding

    model = llama.model
    assert weight_bytes_per_token(model) == llama.footprint_bytes() - sum(  # tied head: read once
        b.numel() * b.element_size() for b in model.buffers())
    weights = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    head = model.get_output_embeddings().weight.numel()
    assert flops_per_token(model, 0) == 2 * (weights + head)
    result = measure_decoding(llama, _edits(llama)[:1], PROMPTS[0], 3, 1)
    assert result["same_tokens"] and result["token_agreement"] == 1.0
    assert result["speedup"] > 0 and set(result["tokens_per_s"]) == {"generate", "lean"}
    bounds = result["bounds"]
    for key in ("bandwidth_bound_tokens_per_s", "compute_bound_tokens_per_s", "kernels_only_tokens_per_s"):
        assert bounds[key] > 0, key
    assert result["packed_4bit"]["layers"] == 0
    text = "\n".join(decoding({"decoding": {"none": result}}))
    assert "| none |" in text and "bandwidth bound" in text


@needs_kernel
def test_packed_decoding_equals_stock_bitsandbytes_inference(tiny_llama_dir, llama4):
    """The lean 4-bit tokens are those of bitsandbytes' own inference route (which repacks the
    weights in place, the trap load_backbone turns off): same kernel, same weights."""
    stock = load_backbone(str(tiny_llama_dir), "4bit", device="cpu")
    for module in stock.model.modules():
        if type(module).__name__ == "Linear4bit":
            module.support_avx512bf16_for_cpu = True
    patches = _edits(llama4)[:1]
    PatchEngine.for_model(stock.model, list(patches[0].layers))  # the edit's hooks on this copy too
    with PatchEngine.activate(patches):
        for prompts in (PROMPTS[:1], PROMPTS):
            assert torch.equal(_tokens(llama4, prompts), _tokens(stock, prompts, lean=False))
