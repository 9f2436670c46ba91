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

log = logging.getLogger(__name__)

__all__ = ["available", "enable", "decode_route", "extra_bytes", "route_kind"]

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
            and not getattr(state, "packing_format_for_cpu", False)
            and state.shape[0] % 32 == 0 and state.shape[1] % 2 == 0)


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
    packed: _Packed | None = self.__dict__.get(_ATTR)
    if (packed is None or args or kwargs or not _ROUTE.get() or torch.is_grad_enabled()
            or x.requires_grad or x.device.type != "cpu"):
        return type(self).forward(self, x, *args, **kwargs)
    # as bitsandbytes' own packed route: x in the compute dtype, bf16 kernel, bias, input dtype
    compute = self.compute_dtype or x.dtype
    a = x.to(compute).reshape(-1, packed.k).to(torch.bfloat16).contiguous()
    out = packed.matmul(a).to(compute)
    if self.bias is not None:
        out += self.bias.to(compute)
    return out.reshape(*x.shape[:-1], packed.n).to(x.dtype)


def _packs(model: nn.Module) -> list[_Packed]:
    return [m.__dict__[_ATTR] for m in model.modules() if _ATTR in m.__dict__]


def enable(model: nn.Module) -> int:
    """Give every CPU 4-bit layer of ``model`` its packed copy and routed forward (once).

    Returns the number of routed layers (0 where the kernel is unavailable or nothing is 4-bit).
    Thread-safe and idempotent; the stored weights are never modified.
    """
    with _LOCK:
        if model in _MODELS:
            return len(_packs(model))
        _MODELS[model] = True
        layers = [m for m in model.modules() if _is_cpu_4bit(m) and _ATTR not in m.__dict__]
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
            module.__dict__[_ATTR] = packed
            module.forward = types.MethodType(_routed_forward, module)
        log.info("packed 4-bit decoding: %d layers, %.1f MiB of packed copies", len(packs),
                 sum(p.nbytes() for p in packs) / 2 ** 20)
        return len(_packs(model))


def extra_bytes(model: nn.Module) -> int:
    """Bytes of the packed copies :func:`enable` made for ``model`` (0 if none)."""
    return sum(p.nbytes() for p in _packs(model))


def route_kind(model: nn.Module) -> str:
    """``native``, ``op`` (packed copies, called through bitsandbytes' op) or ``none``."""
    packs = _packs(model)
    if not packs:
        return "none"
    return "native" if packs[0].kernel is not None else "op"


@contextlib.contextmanager
def decode_route() -> Iterator[None]:
    """Inside: routed 4-bit layers use their packed copies on no-grad calls (this context only)."""
    token = _ROUTE.set(True)
    try:
        yield
    finally:
        _ROUTE.reset(token)
