"""A faster no-grad route through CPU 4-bit layers, for greedy decoding only.

bitsandbytes ships an AVX512-bf16 kernel for CPU nf4/fp4 matmuls (``gemv_4bit``) that is several
times faster than its default route (dequantize the whole matrix, then matmul), but it needs the
weights repacked into another layout, and bitsandbytes repacks them *in place* on the first
no-grad forward. Gradients through a repacked layer are silently wrong, which is why
:func:`~.backbone.load_backbone` turns the repacking off (``support_avx512bf16_for_cpu = False``,
guarded by ``tests/test_backbone.py::test_4bit_gradients_survive_generate``).

This module gets the speed back without the trap: :func:`enable` makes a repacked *copy* of each
4-bit layer's weights (the stored weights are never touched) and wraps the layer's ``forward`` so
that it uses the copy only inside :func:`decode_route` (set by the greedy decoder of
:mod:`.decoding`, in one thread's context) and only while no gradient is recorded. Everywhere else
(edits, training, scoring, other threads) the layer runs exactly as before. The copy costs about
as much memory as the 4-bit weights themselves (:func:`extra_bytes`).

The kernel is called through bitsandbytes' native library directly when a self-check agrees
with bitsandbytes' own op (that skips ~40 us of Python per call, ~200 calls per token), else
through the op.

On CPUs without AVX512-bf16, and wherever a layer computes in float32, the route is instead the
fused AVX2 kernel of :mod:`.fused4bit`: it reads the layer's own 4-bit weights (no copy, no extra
memory) and multiplies in float32 by exactly the default route's dequantized values (float32
rounding of the sums differs). It serves calls of at most :data:`.fused4bit.MAX_ROWS` input rows
(a decoding step); longer inputs (a prompt's first pass) keep the default route, faster there.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import ctypes
import dataclasses
import logging
import threading
import types
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import nn

from . import fused4bit

log = logging.getLogger(__name__)

__all__ = ["available", "enable", "decode_route", "extra_bytes", "route_kind", "head_routed"]

_ROUTE: contextvars.ContextVar[bool] = contextvars.ContextVar("instructedit_packed_4bit", default=False)
_LOCK = threading.Lock()
# the models enable() has seen (their layers carry the packed copies)
_MODELS: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
_KERNEL_NAMES = {"nf4": "gemv_4bit_inference_cpu_nf4_bf16", "fp4": "gemv_4bit_inference_cpu_fp4_bf16"}


@dataclasses.dataclass
class _Packed:
    """The repacked copy of one 4-bit layer's weights and how to multiply by it."""

    weight: torch.Tensor      # (N, K / 2) uint8, bitsandbytes' CPU packing
    absmax: torch.Tensor      # (K / blocksize, N) bf16
    code: torch.Tensor
    n: int
    k: int
    blocksize: int
    kernel: Callable | None   # the native function, or None: through torch.ops.bitsandbytes

    def serves(self, rows: int) -> bool:
        return True

    def forward(self, module: nn.Module, a: torch.Tensor) -> torch.Tensor:
        """``a @ W^T`` for a 2-D ``a`` in the layer's compute dtype, through the packed copy (bf16)."""
        return self.matmul(a.to(torch.bfloat16).contiguous()).to(a.dtype)

    def matmul(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ W^T`` for a 2-D bf16 ``a`` (rows contiguous): (M, K) -> (M, N) bf16."""
        if self.kernel is None:
            return torch.ops.bitsandbytes.gemv_4bit.default(a, self.weight, [self.n, self.k],
                                                            self.absmax, self.code, self.blocksize)
        out = torch.empty((a.shape[0], self.n), dtype=torch.bfloat16)
        self.kernel(a.shape[0], self.n, self.k, a.data_ptr(), self.weight.data_ptr(),
                    self.absmax.data_ptr(), out.data_ptr(), self.blocksize, a.stride(0), out.stride(0))
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.absmax))

    def __deepcopy__(self, memo: dict) -> _Packed:  # the native function is shared, not copied
        return dataclasses.replace(self, weight=copy.deepcopy(self.weight, memo),
                                   absmax=copy.deepcopy(self.absmax, memo), code=copy.deepcopy(self.code, memo))


@dataclasses.dataclass
class _Fused:
    """The fused AVX2 route of one float32 4-bit layer: its own weights, read in place."""

    n: int
    k: int
    blocksize: int
    kernel: fused4bit.Kernels
    # the layer's weight and its kernel arguments, made on first use (for the layer's current weight)
    _args: tuple[nn.Parameter, int, object, fused4bit.WeightArgs] | None = None

    def serves(self, rows: int) -> bool:
        return rows <= fused4bit.MAX_ROWS

    def weight_args(self, module: nn.Module) -> fused4bit.WeightArgs:
        state = module.weight.quant_state
        return fused4bit.WeightArgs.four_bit(module.weight.data, state.absmax, state.code,
                                             self.n, self.k, self.blocksize)

    def forward(self, module: nn.Module, a: torch.Tensor) -> torch.Tensor:
        weight = module.weight
        # the arguments follow the layer's weights (a new tensor, storage or quantization state)
        state, address = getattr(weight, "quant_state", None), weight.data_ptr()
        cached = self._args
        if cached is None or cached[0] is not weight or cached[1] != address or cached[2] is not state:
            cached = self._args = (weight, address, state, self.weight_args(module))
        return fused4bit.run(self.kernel, a if a.stride(1) == 1 else a.contiguous(), cached[3])

    def nbytes(self) -> int:
        return 0

    def __deepcopy__(self, memo: dict) -> _Fused:  # the native functions are shared, not copied
        return dataclasses.replace(self, _args=None)


@dataclasses.dataclass
class _FusedHead(_Fused):
    """The output head of a model whose 4-bit layers are fused: a float32 ``nn.Linear`` read
    once per decoding step by the same library's streaming kernel (BLAS's gemv on its row-major
    weight runs at about half the memory speed here)."""

    def weight_args(self, module: nn.Module) -> fused4bit.WeightArgs:
        return fused4bit.WeightArgs.float32(module.weight)


def _head_route(model: nn.Module, kernels: fused4bit.Kernels) -> tuple[nn.Module, _FusedHead] | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (type(head) is not nn.Linear or head.weight.dtype != torch.float32 or head.weight.device.type != "cpu"
            or head.weight.stride(1) != 1 or head.in_features % 16):
        return None
    return head, _FusedHead(head.out_features, head.in_features, 0, kernels)


def _fusable(module: nn.Module) -> bool:
    """A float32 layer whose layout the fused kernel reads (K and blocksize multiples of 32)."""
    state = module.weight.quant_state
    compute = module.compute_dtype or state.dtype
    return (compute == torch.float32 and state.absmax.dtype == torch.float32
            and state.absmax.is_contiguous() and state.code.dtype == torch.float32
            and module.weight.data.is_contiguous()
            and state.shape[1] % 32 == 0 and state.blocksize % 32 == 0)


def _fused_self_check(module: nn.Module, fused: _Fused) -> bool:
    """The kernel gives the default route's result within float32 rounding on this layer."""
    x = torch.randn(3, fused.k, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            reference = type(module).forward(module, x).float()
            out = fused.forward(module, x)
            if module.bias is not None:
                out = out + module.bias.float()
    except Exception:  # noqa: BLE001
        log.warning("fused 4-bit kernel failed its self-check", exc_info=True)
        return False
    return bool(torch.allclose(out, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max())))


def available() -> bool:
    """Whether this bitsandbytes build has the packed CPU kernel and this CPU can run it."""
    try:
        import bitsandbytes.functional as bnb_functional
        return (hasattr(bnb_functional, "_convert_weight_packed_for_cpu")
                and bool(bnb_functional.has_avx512bf16()))
    except Exception:  # noqa: BLE001 - no bitsandbytes, or it cannot load here
        return False


def _is_cpu_4bit(module: nn.Module) -> bool:
    if type(module).__name__ != "Linear4bit":
        return False
    state = getattr(module.weight, "quant_state", None)
    return (state is not None and module.weight.device.type == "cpu" and not state.nested
            and state.quant_type in _KERNEL_NAMES and len(state.shape) == 2
            and not getattr(state, "packing_format_for_cpu", False))


def _packable(module: nn.Module) -> bool:
    shape = module.weight.quant_state.shape
    return shape[0] % 32 == 0 and shape[1] % 2 == 0


def _native_kernel(quant_type: str) -> Callable | None:
    """The native packed kernel as a ctypes function of our own (argument types set on it)."""
    try:
        from bitsandbytes.cextension import lib
        fn = ctypes.CDLL(lib._lib._name)[_KERNEL_NAMES[quant_type]]
    except Exception:  # noqa: BLE001 - another bitsandbytes layout: use the op
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, i64, i64, i64]
    fn.restype = None
    return fn


def _pack(module: nn.Module, kernels: dict[str, Callable | None]) -> _Packed:
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    state = module.weight.quant_state
    # the conversion rewrites the state's fields: hand it a copy (the layer's state stays as is)
    packed, packed_state = _convert_weight_packed_for_cpu(module.weight.data, copy.copy(state))
    n, k = (int(s) for s in state.shape)
    return _Packed(packed, packed_state.absmax, packed_state.code, n, k, int(state.blocksize),
                   kernels.get(state.quant_type))


def _self_check(packed: _Packed) -> bool:
    """The native call gives bitsandbytes' op's result (else the op is used)."""
    a = torch.randn(3, packed.k, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    try:
        native = packed.matmul(a)
        kernel, packed.kernel = packed.kernel, None
        reference = packed.matmul(a)
        packed.kernel = kernel
    except Exception:  # noqa: BLE001
        return False
    return torch.equal(native, reference)


_ATTR = "_instructedit_packed"


def _routed_forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A routed layer's ``forward`` (bound to the layer, so a deep copy rebinds it to the copy)."""
    route: _Packed | _Fused | None = self.__dict__.get(_ATTR)
    if (route is None or args or kwargs or not _ROUTE.get() or torch.is_grad_enabled()
            or x.requires_grad or not x.is_cpu or not route.serves(x.numel() // route.k)):
        return type(self).forward(self, x, *args, **kwargs)
    # as bitsandbytes' own route: x in the compute dtype, the kernel, bias, back to x's dtype
    compute = getattr(self, "compute_dtype", None) or x.dtype
    a = x.reshape(-1, route.k)
    out = route.forward(self, a if a.dtype == compute else a.to(compute))
    if self.bias is not None:
        out += self.bias.to(compute)
    out = out.view(*x.shape[:-1], route.n)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _packs(model: nn.Module) -> list[_Packed | _Fused]:
    """The routes of ``model``'s 4-bit layers (the output head's apart)."""
    return [m.__dict__[_ATTR] for m in model.modules()
            if _ATTR in m.__dict__ and not isinstance(m.__dict__[_ATTR], _FusedHead)]


def _route(module: nn.Module, route: _Packed | _Fused) -> None:
    module.__dict__[_ATTR] = route
    module.forward = types.MethodType(_routed_forward, module)


def _enable_fused(model: nn.Module, layers: list[nn.Module]) -> list[nn.Module]:
    """Route the float32 layers (and the output head) through the fused kernels; returns the
    layers left unrouted."""
    fusable = [m for m in layers if _fusable(m)]
    kernels = fused4bit.load() if fusable else None
    if kernels is None:
        return layers
    routes: list[tuple[nn.Module, _Fused]] = [
        (m, _Fused(*(int(s) for s in m.weight.quant_state.shape), int(m.weight.quant_state.blocksize), kernels))
        for m in fusable]
    head = _head_route(model, kernels)
    routes += [head] if head is not None else []
    for module, route in routes[:1] + routes[-1:]:  # the first layer and the head (or last layer)
        if not _fused_self_check(module, route):
            log.warning("fused kernel disagrees with the default route on %s; decoding the default way",
                        type(module).__name__)
            return layers
    for module, route in routes:
        _route(module, route)
    log.info("fused 4-bit decoding (AVX2): %d layers%s, no copies", len(fusable),
             " and the output head" if head is not None else "")
    return [m for m in layers if _ATTR not in m.__dict__]


def enable(model: nn.Module) -> int:
    """Give every CPU 4-bit layer of ``model`` a fast no-grad route (once): the fused AVX2 kernel
    for float32 layers, else a packed copy for bitsandbytes' AVX512-bf16 kernel.

    Returns the number of routed layers (0 where no kernel runs here or nothing is 4-bit).
    Thread-safe and idempotent; the stored weights are never modified.
    """
    with _LOCK:
        if model in _MODELS:
            return len(_packs(model))
        _MODELS[model] = True
        layers = [m for m in model.modules() if _is_cpu_4bit(m) and _ATTR not in m.__dict__]
        layers = [m for m in (_enable_fused(model, layers) if layers else layers) if _packable(m)]
        if not layers or not available():
            return len(_packs(model))
        kernels = {q: _native_kernel(q) for q in {m.weight.quant_state.quant_type for m in layers}}
        try:
            packs = [_pack(module, kernels) for module in layers]
        except Exception:  # noqa: BLE001 - leave every layer on its own forward
            log.warning("packing 4-bit layers for fast decoding failed; decoding the slow way",
                        exc_info=True)
            return len(_packs(model))
        if not _self_check(packs[0]):
            log.info("packed 4-bit decoding: the native call disagrees with bitsandbytes' op; using the op")
            for packed in packs:
                packed.kernel = None
        for module, packed in zip(layers, packs, strict=True):
            _route(module, packed)
        log.info("packed 4-bit decoding: %d layers, %.1f MiB of packed copies", len(packs),
                 sum(p.nbytes() for p in packs) / 2 ** 20)
        return len(_packs(model))


def extra_bytes(model: nn.Module) -> int:
    """Bytes of the packed copies :func:`enable` made for ``model`` (0 if none)."""
    return sum(p.nbytes() for p in _packs(model))


def head_routed(model: nn.Module) -> bool:
    """Whether :func:`enable` routed ``model``'s float32 output head through the fused kernel."""
    return any(isinstance(m.__dict__.get(_ATTR), _FusedHead) for m in model.modules())


def route_kind(model: nn.Module) -> str:
    """``fused`` (the AVX2 kernel, in place), ``native``, ``op`` (packed copies, called through
    bitsandbytes' op) or ``none``; the first routed layer's."""
    packs = _packs(model)
    if not packs:
        return "none"
    if isinstance(packs[0], _Fused):
        return "fused"
    return "native" if packs[0].kernel is not None else "op"


@contextlib.contextmanager
def decode_route() -> Iterator[None]:
    """Inside: routed 4-bit layers use their fast route on no-grad calls (this context only)."""
    token = _ROUTE.set(True)
    try:
        yield
    finally:
        _ROUTE.reset(token)
