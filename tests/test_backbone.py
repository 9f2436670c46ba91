"""Backbone loading (float, 8-bit, 4-bit), adapters, run_from_layer and the 4-bit gradient trap."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instructedit.editing.patches import PatchEngine
from instructedit.model.backbone import BackboneError, load_backbone
from instructedit.model.generation import GenerationConfig, generate
from instructedit.model.hardware import cpu_flags, default_float_dtype
from instructedit.scoring import answer_logits_from_hidden, score_answers, tokenize_answers

QUANT_CLASS = {"none": None, "8bit": "Linear8bitLt", "4bit": "Linear4bit"}
FLOAT_CLASS = {"llama": "Linear", "gpt2": "Conv1D"}


def _family(backbone) -> str:
    return backbone.adapter.family


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
def test_load_and_generate(tiny_model_dir, quant):
    backbone = load_backbone(str(tiny_model_dir), quant, device="cpu")
    info = backbone.info()
    assert info["quantization"] == quant
    assert info["dtype"] == default_float_dtype(quant, "cpu")
    assert info["num_layers"] == 4 and info["hidden_size"] == 64
    module = backbone.module(backbone.edited_module_names()[0])
    expected = QUANT_CLASS[quant] or FLOAT_CLASS[_family(backbone)]
    assert type(module).__name__ == expected
    config = GenerationConfig(max_new_tokens=6)
    texts = generate(backbone, ["The capital of France is", "Rome"], config)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # Greedy and deterministic; a single prompt gives the same text as in a batch of one.
    assert generate(backbone, "The capital of France is", config) == texts[:1]
    enc = backbone.tokenizer("The capital of France is", return_tensors="pt")
    out = backbone.model.generate(**enc, max_new_tokens=6, do_sample=False,
                                  pad_token_id=backbone.tokenizer.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_module_names(tiny_llama_dir, tiny_gpt2_dir):
    llama = load_backbone(str(tiny_llama_dir), device="cpu")
    assert llama.family == "llama"
    assert llama.edited_module_names() == [
        f"model.layers.{i}.mlp.{m}" for i in (1, 2, 3) for m in ("gate_proj", "up_proj", "down_proj")]
    assert llama.edited_module_names(1) == [f"model.layers.3.mlp.{m}"
                                            for m in ("gate_proj", "up_proj", "down_proj")]
    gpt2 = load_backbone(str(tiny_gpt2_dir), device="cpu")
    assert gpt2.family == "gpt2"
    assert gpt2.edited_module_names() == [
        f"transformer.h.{i}.mlp.{m}" for i in (1, 2, 3) for m in ("c_fc", "c_proj")]
    assert gpt2.adapter.layer_index("transformer.h.2.mlp.c_fc") == 2
    with pytest.raises(ValueError):
        llama.edited_module_names(5)


def test_orientation_float(tiny_llama_dir, tiny_gpt2_dir):
    llama = load_backbone(str(tiny_llama_dir), device="cpu")
    adapter = llama.adapter
    gate, down = llama.module("model.layers.3.mlp.gate_proj"), llama.module("model.layers.3.mlp.down_proj")
    assert adapter.in_out_features(gate) == (64, 128)
    assert adapter.in_out_features(down) == (128, 64)
    assert torch.equal(adapter.weight_out_in(gate), gate.weight)

    gpt2 = load_backbone(str(tiny_gpt2_dir), device="cpu")
    c_fc, c_proj = gpt2.module("transformer.h.3.mlp.c_fc"), gpt2.module("transformer.h.3.mlp.c_proj")
    assert type(c_fc).__name__ == "Conv1D" and tuple(c_fc.weight.shape) == (64, 256)
    assert gpt2.adapter.in_out_features(c_fc) == (64, 256)
    assert gpt2.adapter.in_out_features(c_proj) == (256, 64)
    assert torch.equal(gpt2.adapter.weight_out_in(c_fc), c_fc.weight.t())
    x = torch.randn(3, 64)
    # (out, in) means y = x W^T + b, as for nn.Linear
    torch.testing.assert_close(c_fc(x), x @ gpt2.adapter.weight_out_in(c_fc).t() + c_fc.bias)


@pytest.mark.parametrize("quant,tol", [("8bit", 0.01), ("4bit", 0.15)])
def test_orientation_quantized_gpt2(tiny_gpt2_dir, quant, tol):
    """Quantization turns Conv1D (in, out) into Linear8bitLt/Linear4bit with (out, in) weights."""
    ref = load_backbone(str(tiny_gpt2_dir), device="cpu")
    q = load_backbone(str(tiny_gpt2_dir), quant, device="cpu")
    for name in q.edited_module_names():
        module = q.module(name)
        assert type(module).__name__ == QUANT_CLASS[quant]
        assert q.adapter.in_out_features(module) == ref.adapter.in_out_features(ref.module(name))
        deq = q.adapter.weight_out_in(module)
        float_w = ref.adapter.weight_out_in(ref.module(name))
        assert deq.shape == float_w.shape
        rel = (deq - float_w).norm() / float_w.norm()
        assert rel < tol, f"{name}: dequantized weight is {rel:.3f} away from the float one"
        # the transposed float weight would be the wrong shape (or far off): orientation matters
        assert deq.shape != float_w.t().shape


def _right_padded(tokenizer, texts):
    tokenizer.padding_side = "right"
    return tokenizer(texts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("start", [0, 2, 3])
def test_run_from_layer_matches_full_model(tiny_model_dir, start):
    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    enc = _right_padded(backbone.tokenizer, ["The Eiffel Tower is located in Paris", "Rome is"])
    with torch.no_grad():
        out = backbone.model.base_model(**enc, output_hidden_states=True)
        top = backbone.adapter.run_from_layer(backbone.model, out.hidden_states[start], start)
    mask = enc["attention_mask"].bool()
    assert mask.sum() < mask.numel()  # the second row really is padded
    torch.testing.assert_close(top[mask], out.last_hidden_state[mask], atol=1e-5, rtol=0)
    if start > 0:  # a wrong start layer gives different states: the comparison can fail
        with torch.no_grad():
            wrong = backbone.adapter.run_from_layer(backbone.model, out.hidden_states[start - 1], start)
        assert not torch.allclose(wrong[mask], out.last_hidden_state[mask], atol=1e-3)


def test_unknown_model_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="no-such-model-xyz"):
        load_backbone("no-such-model-xyz", device="cpu")


def test_folder_that_is_not_a_model(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a model")
    with pytest.raises(BackboneError, match="not a model folder"):
        load_backbone(str(folder), device="cpu")
    with pytest.raises(BackboneError, match="not a model folder"):
        load_backbone(str(folder / "readme.txt"), device="cpu")
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(str(tmp_path / "missing" / "model"), device="cpu")
    with pytest.raises(BackboneError, match="quantization"):
        load_backbone(str(folder), "3bit", device="cpu")


def _output_gradients(backbone, names) -> dict[str, torch.Tensor]:
    """d(mean NLL of the target)/d(output) of the edited modules, as the editor computes them."""
    PatchEngine.for_model(backbone.model, names)
    batch = tokenize_answers(backbone.tokenizer, ["The Eiffel Tower is located in"], ["Rome Italy"])
    with torch.enable_grad(), PatchEngine.capture(names) as capture:
        hidden = backbone.model.base_model(input_ids=batch.input_ids,
                                           attention_mask=batch.attention_mask).last_hidden_state
        loss = score_answers(answer_logits_from_hidden(backbone.model, hidden, batch), batch).mean_nll.sum()
        grads = capture.output_gradients(loss)
    return {n: g.detach().float().flatten() for n, g in grads.items()}


def _dequantized_float_copy(tiny_dir, quantized):
    """A float32 model whose quantized layers hold the 4-bit model's dequantized weights."""
    ref = load_backbone(str(tiny_dir), device="cpu")
    with torch.no_grad():
        for name, module in quantized.model.named_modules():
            if type(module).__name__ == "Linear4bit":
                ref.module(name).weight.copy_(quantized.adapter.weight_out_in(module))
        q_state = {k: v for k, v in quantized.model.state_dict().items() if v.is_floating_point()}
        for key, value in ref.model.state_dict().items():
            if key in q_state and q_state[key].shape == value.shape:
                value.copy_(q_state[key].float())
    return ref


def test_4bit_gradients_survive_generate(tiny_llama_dir):
    """The CPU 4-bit trap: no-grad inference must not break later gradients through 4-bit layers."""
    names = ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.down_proj", "model.layers.2.mlp.up_proj"]
    fresh = load_backbone(str(tiny_llama_dir), "4bit", device="cpu")
    before = _output_gradients(fresh, names)  # no generate yet

    backbone = load_backbone(str(tiny_llama_dir), "4bit", device="cpu")
    generate(backbone, ["The capital of France is"], GenerationConfig(max_new_tokens=4))
    after = _output_gradients(backbone, names)
    reference = _output_gradients(_dequantized_float_copy(tiny_llama_dir, fresh), names)
    for name in names:
        assert before[name].norm() > 0
        assert F.cosine_similarity(after[name], before[name], dim=0) > 0.99, name
        assert F.cosine_similarity(after[name], reference[name], dim=0) > 0.99, name


@pytest.mark.slow
def test_real_model_paris_and_4bit_footprint():
    fp32 = load_backbone("smollm2-135m", device="cpu")
    text = generate(fp32, "The capital of France is", GenerationConfig(max_new_tokens=3))[0]
    assert text.startswith(" Paris"), text
    fp32_bytes = fp32.footprint_bytes()
    del fp32
    assert load_backbone("smollm2-135m", "4bit", device="cpu").info()["dtype"] == default_float_dtype("4bit", "cpu")
    q4 = load_backbone("smollm2-135m", "4bit", dtype="bfloat16", device="cpu")  # stored as the app stores it where bf16 is fast
    assert q4.footprint_bytes() < 0.30 * fp32_bytes, (q4.footprint_bytes(), fp32_bytes)


class _ReadOnlyTokenizer:
    """Proxy that fails on any attribute write or batch padding (both mutate shared state)."""

    def __init__(self, tokenizer) -> None:
        object.__setattr__(self, "_tokenizer", tokenizer)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __setattr__(self, name, value):
        raise AssertionError(f"generate() changed the shared tokenizer's {name}")

    def __call__(self, *args, **kwargs):
        assert not kwargs.get("padding"), "batch padding mutates the shared backend tokenizer"
        return self._tokenizer(*args, **kwargs)


def test_generate_pads_left_without_touching_the_tokenizer(tiny_gpt2_dir):
    """Concurrent users share one tokenizer: generate() must not change its settings."""
    backbone = load_backbone(str(tiny_gpt2_dir), device="cpu")
    config = GenerationConfig(max_new_tokens=5)
    prompts = ["The Eiffel Tower is located in Paris and", "Rome", "The capital of"]
    singles = [generate(backbone, p, config)[0] for p in prompts]
    backbone.tokenizer = _ReadOnlyTokenizer(backbone.tokenizer)
    assert generate(backbone, prompts, config) == singles  # left padding is exact for each row
    assert backbone.tokenizer.padding_side == "right"


def test_float_dtype_follows_the_hardware(tmp_path, monkeypatch):
    """4-bit computes in bf16 only where bf16 is native (CUDA, AVX512-BF16/AMX CPUs): emulated bf16
    matmuls are about 170x slower than float32 on an AVX2-only CPU."""
    from instructedit.model import hardware

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "absent") == frozenset()
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda native=native: native)
        assert default_float_dtype("4bit", "cpu") == expected
        assert default_float_dtype("4bit", "cuda") == "bfloat16"
        assert default_float_dtype("none", "cpu") == default_float_dtype("8bit", "cuda") == "float32"
