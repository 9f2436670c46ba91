"""The fused AVX2 4-bit kernel: bitsandbytes' dequantized weights times x, within float32
rounding, for every layout bitsandbytes stores; a row's result the same alone or in any batch;
the decoding route through it leaves stored weights and gradients alone; bad input and a
missing compiler give clear errors or the default route, never wrong numbers."""
from __future__ import annotations

import copy

import pytest
import torch

from instructedit.model import fused4bit, packed4bit
from instructedit.model.backbone import load_backbone
from tests.test_fast_decode import plain_and_routed

bnb_functional = pytest.importorskip("bitsandbytes.functional")
KERNELS = fused4bit.load()
needs_kernel = pytest.mark.skipif(KERNELS is None, reason="no AVX2/FMA or no C compiler here")


def stored_weights(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int,
                   blocksize: int) -> torch.Tensor:
    """The weights bitsandbytes' 4-bit storage holds, decoded here: two codes a byte (high nibble
    first) over the row-major weight, one absmax per ``blocksize`` consecutive values, blocks
    running across rows. (bitsandbytes 0.50's own CPU ``dequantize_4bit`` decodes blocks that cross
    rows wrongly on AVX-512 machines, so it cannot be the reference.)"""
    flat = packed.flatten()
    codes = torch.stack([(flat >> 4).long(), (flat & 15).long()], 1).flatten()[: n * k]
    return (code[codes] * absmax.float().repeat_interleave(blocksize)[: n * k]).view(n, k)


def _quantized(n: int, k: int, quant_type: str = "nf4", blocksize: int = 64, seed: int = 0):
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    packed, state = bnb_functional.quantize_4bit(weight, quant_type=quant_type, blocksize=blocksize)
    args = fused4bit.WeightArgs.four_bit(packed, state.absmax, state.code, n, k, blocksize)
    dense = stored_weights(packed, state.absmax, state.code, n, k, blocksize)
    # the decoding is the storage's: every weight within half the widest code gap (nf4 0.28, fp4
    # 0.33 of its block's absmax) of its value; a decoding off by a block is far outside
    scale = state.absmax.float().repeat_interleave(blocksize)[: n * k].view(n, k)
    assert bool(((dense - weight).abs() <= 0.2 * scale).all())
    return args, dense


def test_the_reference_decoding_is_bitsandbytes_where_blocks_stay_in_their_rows():
    n, k, blocksize = 16, 128, 64
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(3))
    packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", blocksize=blocksize)
    torch.testing.assert_close(stored_weights(packed, state.absmax, state.code, n, k, blocksize),
                               bnb_functional.dequantize_4bit(packed, state))


@needs_kernel
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize(("n", "k", "blocksize"), [(64, 64, 64), (96, 576, 64), (48, 96, 64), (32, 160, 32),
                                                   (40, 256, 128)],
                         ids=["square", "wide", "blocks-cross-rows", "small-blocks", "large-blocks"])
def test_fused_matmul_is_the_dequantized_product(quant_type, n, k, blocksize):
    args, dense = _quantized(n, k, quant_type, blocksize)
    for rows in (1, 2, 3, 4, 5, 9, 33):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        out, reference = fused4bit.matmul(KERNELS, x, args), x @ dense.T
        assert out.shape == reference.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


@needs_kernel
def test_a_rows_result_does_not_depend_on_the_batch():
    args, _ = _quantized(64, 192)
    head = torch.randn(80, 64, generator=torch.Generator().manual_seed(1))
    head_args = fused4bit.WeightArgs.float32(head)
    x = torch.randn(11, 192, generator=torch.Generator().manual_seed(2))
    batch, head_batch = fused4bit.matmul(KERNELS, x, args), fused4bit.matmul(KERNELS, x[:, :64], head_args)
    for row in range(11):
        assert torch.equal(fused4bit.matmul(KERNELS, x[row:row + 1], args)[0], batch[row])
        assert torch.equal(fused4bit.matmul(KERNELS, x[row:row + 1, :64], head_args)[0], head_batch[row])
    # a strided input (every other row) gives the same rows as the contiguous one
    assert torch.equal(fused4bit.matmul(KERNELS, x[::2], args), batch[::2])


@needs_kernel
def test_float32_rows_kernel_is_the_product():
    weight = torch.randn(300, 80, generator=torch.Generator().manual_seed(3))
    args = fused4bit.WeightArgs.float32(weight)
    for rows in (1, 2, 7):
        x = torch.randn(rows, 80)
        torch.testing.assert_close(fused4bit.matmul(KERNELS, x, args), x @ weight.T, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_bad_input_is_refused_with_a_reason():
    args, _ = _quantized(32, 64)
    with pytest.raises(ValueError, match="float32"):
        fused4bit.matmul(KERNELS, torch.randn(2, 64, dtype=torch.float64), args)
    with pytest.raises(ValueError, match=r"\(M, 64\)"):
        fused4bit.matmul(KERNELS, torch.randn(2, 63), args)
    packed, state = bnb_functional.quantize_4bit(torch.randn(32, 48), quant_type="nf4", blocksize=64)
    with pytest.raises(ValueError, match="divisible by 32"):
        fused4bit.WeightArgs.four_bit(packed, state.absmax, state.code, 32, 48, 64)
    packed, state = bnb_functional.quantize_4bit(torch.randn(32, 64), quant_type="nf4", blocksize=64)
    with pytest.raises(ValueError, match="absmax"):
        fused4bit.WeightArgs.four_bit(packed, torch.ones(3), state.code, 32, 64, 64)
    with pytest.raises(ValueError, match="bytes"):
        fused4bit.WeightArgs.four_bit(torch.zeros(10, dtype=torch.uint8), state.absmax, state.code, 32, 64, 64)
    with pytest.raises(ValueError, match="contiguous rows"):
        fused4bit.WeightArgs.float32(torch.randn(64, 32).T)


def test_no_compiler_or_switched_off_means_the_default_route(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTEDIT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing else to find either
    assert fused4bit.build_kernels() is None
    monkeypatch.setenv("INSTRUCTEDIT_FUSED_4BIT", "0")
    assert fused4bit.build_kernels() is None
    assert not list(tmp_path.glob("*.so"))


@needs_kernel
def test_a_failing_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTEDIT_KERNEL_CACHE", str(tmp_path))
    build = fused4bit.KernelBuild(flags=("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC",
                                         "-DUNDEFINED_MACRO_SYNTAX("))
    assert fused4bit.build_kernels(build) is None
    assert not list(tmp_path.iterdir())  # no half-written library, no temporary file
    fresh = fused4bit.build_kernels()  # a good build into the same folder
    assert fresh is not None and len(list(tmp_path.glob("fused4bit_avx2-*.so"))) == 1


# ----- the decoding route through real (tiny) 4-bit models ---------------------------------------
@pytest.fixture(scope="module")
def llama4(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), "4bit", device="cpu", dtype="float32")


@needs_kernel
def test_fused_route_only_inside_no_grad_decoding(llama4):
    model = llama4.model
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    stored = [(m.weight.data.clone(), m.weight.quant_state.absmax.clone()) for m in layers]
    assert packed4bit.enable(model) == len(layers) == packed4bit.enable(model)
    assert packed4bit.route_kind(model) == "fused" and packed4bit.extra_bytes(model) == 0
    assert packed4bit.head_routed(model)
    for module, (data, absmax) in zip(layers, stored, strict=True):
        assert torch.equal(module.weight.data, data) and torch.equal(module.weight.quant_state.absmax, absmax)
    layer = layers[0]
    x = torch.randn(2, 3, layer.in_features)
    plain, fast = plain_and_routed(layer, x)
    long = torch.randn(1, fused4bit.MAX_ROWS + 1, layer.in_features)
    with torch.no_grad(), packed4bit.decode_route():
        assert torch.equal(layer(long), type(layer).forward(layer, long))  # a prompt pass: default
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    clone = copy.deepcopy(layer)  # a copy's route reads the copy's weights
    assert clone.forward.__self__ is clone
    with torch.no_grad(), packed4bit.decode_route():
        assert torch.equal(clone(x), fast)
    head = model.get_output_embeddings()
    h = torch.randn(3, 1, head.in_features)
    with torch.no_grad(), packed4bit.decode_route():
        routed = head(h)
        torch.testing.assert_close(routed, torch.nn.functional.linear(h, head.weight), rtol=1e-5, atol=1e-5)
        stored = head.weight.data
        try:  # new storage under the same parameter: the route reads the new weights
            head.weight.data = stored * 2
            torch.testing.assert_close(head(h), 2 * routed, rtol=1e-5, atol=1e-5)
        finally:
            head.weight.data = stored
        assert torch.equal(head(h), routed)


@needs_kernel
@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_fused_decoding_agrees_with_generate_and_keeps_gradients(request, model_fixture):
    """Greedy tokens through the fused route are generate's (float32 sums in another order: the
    tiny models' logits are far from ties), and gradients afterwards are a fresh model's."""
    from tests.test_backbone import _output_gradients
    from tests.test_fast_decode import PROMPTS, _tokens

    model_dir = str(request.getfixturevalue(model_fixture))
    backbone = load_backbone(model_dir, "4bit", device="cpu", dtype="float32")
    fresh = load_backbone(model_dir, "4bit", device="cpu", dtype="float32")
    names = [name for name, m in backbone.model.named_modules() if type(m).__name__ == "Linear4bit"][-2:]
    before = _output_gradients(fresh, names)
    reference = _tokens(backbone, PROMPTS, lean=False)
    fast = _tokens(backbone, PROMPTS, packed_4bit=True)
    assert packed4bit.route_kind(backbone.model) == "fused"
    assert torch.equal(fast, reference)
    after = _output_gradients(backbone, names)
    for name in names:
        assert torch.equal(after[name], before[name]), name
