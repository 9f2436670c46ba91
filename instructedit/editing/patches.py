"""Edits as low-rank patches, applied by forward hooks; the only module that touches hooks.

A patch for one edited module holds factors ``U`` (rows in the module's input space) and ``D``
(rows in its output space) and a signed step ``scale``; its weight delta is
``dW = scale * D^T U`` in (out, in) orientation, and its contribution to the module's output is
``scale * (x @ U^T) @ D``. The shared base weights are never modified.

Which patches are active is a per-context value (:data:`contextvars.ContextVar`), so two threads
(two users) running the same model at once each see only their own edits. Factors may carry a
leading batch dimension (one patch per row of a batch), which training and evaluation use to edit
many examples independently in one forward pass.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserFacingError
from ..model.decoding import live_rows

__all__ = ["LayerPatch", "Patch", "Capture", "PatchEngine", "NonFiniteEditError", "active_patches",
           "combine_patches", "concat_layer_patches", "stack_patches"]


class NonFiniteEditError(UserFacingError, ValueError):
    """An edit produced NaN or inf values; it is rejected and never becomes active."""


@dataclass(frozen=True)
class LayerPatch:
    """Low-rank factors of one edited module: ``dW = scale * D^T U``.

    ``u``: (r, in) or (B, r, in); ``d``: (r, out) or (B, r, out); ``scale``: scalar tensor.
    """

    u: torch.Tensor
    d: torch.Tensor
    scale: torch.Tensor

    @property
    def batched(self) -> bool:
        return self.u.dim() == 3

    def output_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The patch's contribution to the module output for input ``x`` (..., in)."""
        u = self.u.to(x.dtype) if self.u.dtype != x.dtype else self.u
        d = self.d.to(x.dtype) if self.d.dtype != x.dtype else self.d
        if self.batched:
            live = live_rows()
            if live is not None and x.dim() == 3 and x.shape[0] == len(live) != u.shape[0]:
                u, d = u[live], d[live]  # the decoder dropped finished rows
            if x.dim() != 3 or x.shape[0] != u.shape[0]:
                raise ValueError(f"a batched patch of {u.shape[0]} rows got input {tuple(x.shape)}")
            return torch.bmm(torch.bmm(x, u.transpose(1, 2)), d) * self.scale.to(x.dtype)
        return ((x @ u.t()) @ d) * self.scale.to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The full (out, in) weight delta (only for merging and tests: it is large)."""
        if self.batched:
            raise ValueError("a batched patch has one delta per row")
        return self.scale.float() * (self.d.float().t() @ self.u.float())

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.u).all() and torch.isfinite(self.d).all()
                    and torch.isfinite(self.scale).all())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.u, self.d, self.scale))

    def detach(self) -> LayerPatch:
        return LayerPatch(self.u.detach(), self.d.detach(), self.scale.detach())

    def truncated(self, rank: int) -> LayerPatch:
        """The best rank-``rank`` approximation of this update (same scale; batched or not).

        Exact top-``rank`` SVD of ``D^T U`` computed through QR of the two thin factors, so it
        never forms the (out, in) matrix. Patches with at most ``rank`` rows are returned as is.
        """
        if rank < 1:
            raise ValueError(f"a patch rank must be at least 1, got {rank}")
        if self.u.shape[-2] <= rank:
            return self
        u, d = self.u.float(), self.d.float()
        qu, ru = torch.linalg.qr(u.transpose(-1, -2))        # U^T = qu ru : (in, r), (r, r)
        qd, rd = torch.linalg.qr(d.transpose(-1, -2))        # D^T = qd rd : (out, r), (r, r)
        a, s, bh = torch.linalg.svd(rd @ ru.transpose(-1, -2))  # D^T U = qd (a s bh) qu^T
        d_k = ((qd @ a[..., :rank]) * s[..., None, :rank]).transpose(-1, -2).contiguous()
        u_k = (qu @ bh[..., :rank, :].transpose(-1, -2)).transpose(-1, -2).contiguous()
        return LayerPatch(u_k.to(self.u.dtype), d_k.to(self.d.dtype), self.scale)


@dataclass(frozen=True)
class Patch:
    """A set of :class:`LayerPatch` keyed by dotted module name (one edit's weight change)."""

    layers: Mapping[str, LayerPatch]

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteEditError` if any factor is NaN or inf."""
        bad = [name for name, layer in self.layers.items() if not layer.is_finite()]
        if bad:
            raise NonFiniteEditError(f"the edit produced non-finite values in {', '.join(bad)}; "
                                     "it was rejected and nothing changed")

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers.values())

    def detach(self) -> Patch:
        return Patch({k: v.detach() for k, v in self.layers.items()})

    def select_rows(self, rows: torch.Tensor) -> Patch:
        """A batched patch whose row ``i`` is row ``rows[i]`` of this one."""
        return Patch({k: LayerPatch(v.u[rows], v.d[rows], v.scale) for k, v in self.layers.items()})

    def rows_masked(self, keep: torch.Tensor) -> Patch:
        """A batched patch whose rows where ``keep`` (B,) is false change nothing (zero factors)."""
        return Patch({k: LayerPatch(v.u * keep.to(v.u.dtype).view(-1, *([1] * (v.u.dim() - 1))),
                                    v.d * keep.to(v.d.dtype).view(-1, *([1] * (v.d.dim() - 1))), v.scale)
                      for k, v in self.layers.items()})

    def join_halves(self) -> Patch:
        """A batched patch of ``2n`` rows as ``n`` rows: row ``i`` sums the updates of rows ``i``
        and ``n + i`` (their factors side by side along the rank axis)."""
        joined = {}
        for name, layer in self.layers.items():
            rows = layer.u.shape[0]
            if not layer.batched or rows % 2:
                raise ValueError(f"join_halves needs a batched patch of an even number of rows, "
                                 f"got {tuple(layer.u.shape)}")
            half = rows // 2
            joined[name] = LayerPatch(torch.cat([layer.u[:half], layer.u[half:]], dim=1),
                                      torch.cat([layer.d[:half], layer.d[half:]], dim=1), layer.scale)
        return Patch(joined)

    def scaled(self, factor: float) -> Patch:
        """The same update times ``factor`` (each module's scale multiplied)."""
        if factor == 1.0:
            return self
        return Patch({k: LayerPatch(v.u, v.d, v.scale * factor) for k, v in self.layers.items()})

    def truncated(self, rank: int | None) -> Patch:
        """Every module's update cut to its best rank-``rank`` approximation (None: unchanged)."""
        if rank is None:
            return self
        return Patch({k: v.truncated(rank) for k, v in self.layers.items()})

    def to(self, dtype: torch.dtype) -> Patch:
        return Patch({k: LayerPatch(v.u.to(dtype), v.d.to(dtype), v.scale.float())
                      for k, v in self.layers.items()})


@dataclass
class Capture:
    """Collects edited modules' inputs and gradient probes during one forward pass."""

    names: frozenset[str]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    probes: dict[str, torch.Tensor] = field(default_factory=dict)

    def output_gradients(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """dloss/d(module output) for every captured module, in one backward pass."""
        names = [n for n in self.names if n in self.probes]
        grads = torch.autograd.grad(loss, [self.probes[n] for n in names], allow_unused=True)
        out = {}
        for name, grad in zip(names, grads, strict=True):
            out[name] = torch.zeros_like(self.probes[name]) if grad is None else grad
        return out


_ACTIVE: contextvars.ContextVar[tuple[Patch, ...]] = contextvars.ContextVar(
    "instructedit_active_patches", default=())
_CAPTURE: contextvars.ContextVar[Capture | None] = contextvars.ContextVar(
    "instructedit_capture", default=None)


def concat_layer_patches(layers: Sequence[LayerPatch]) -> LayerPatch:
    """One layer patch whose delta is the sum of ``layers``' (all batched or all not): their
    factors side by side along the rank axis, each one's scale folded into its ``D``."""
    axis = 1 if layers[0].batched else 0
    u = torch.cat([layer.u for layer in layers], dim=axis)
    d = torch.cat([layer.d * layer.scale.to(layer.d.dtype) for layer in layers], dim=axis)
    return LayerPatch(u, d, torch.ones((), dtype=torch.float32, device=u.device))


def combine_patches(patches: Sequence[Patch]) -> tuple[Patch, ...]:
    """Fold several unbatched patches into one per module (rows concatenated, scales folded in).

    ``sum_i s_i (x U_i^T) D_i == (x [U_1; U_2; ...]^T) [s_1 D_1; s_2 D_2; ...]``, so a stack of N
    edits costs one matmul pair per module instead of N (the generation overhead of active edits
    stays flat). Batched patches (training, evaluation) are returned unchanged.
    """
    def is_batched(patch: Patch) -> bool:
        return any(layer.batched for layer in patch.layers.values())

    plain = [p for p in patches if not is_batched(p)]
    if len(plain) < 2:
        return tuple(patches)
    batched = [p for p in patches if is_batched(p)]
    names: dict[str, list[LayerPatch]] = {}
    for patch in plain:
        for name, layer in patch.layers.items():
            names.setdefault(name, []).append(layer)
    combined = {name: concat_layer_patches(layers) for name, layers in names.items()}
    return (Patch(combined), *batched)


def stack_patches(patches: Sequence[Patch]) -> Patch:
    """One batched patch whose row ``i`` is the unbatched ``patches[i]``.

    Factors are zero-padded to the largest rank per module (a zero row adds nothing) and each
    patch's scale is folded into its ``D``; a patch without a module gets all-zero factors there.
    Editors that make one edit at a time (ROME) are evaluated in batches this way.
    """
    if not patches:
        raise ValueError("no patches to stack")
    shapes: dict[str, tuple[int, int, int, torch.device]] = {}
    for patch in patches:
        for name, layer in patch.layers.items():
            if layer.batched:
                raise ValueError("stack_patches takes unbatched patches")
            rank = max(layer.u.shape[0], shapes.get(name, (0,))[0])
            shapes[name] = (rank, layer.u.shape[1], layer.d.shape[1], layer.u.device)
    layers = {}
    for name, (rank, n_in, n_out, device) in shapes.items():
        u = torch.zeros((len(patches), rank, n_in), device=device)
        d = torch.zeros((len(patches), rank, n_out), device=device)
        for row, patch in enumerate(patches):
            layer = patch.layers.get(name)
            if layer is not None:
                r = layer.u.shape[0]
                u[row, :r] = layer.u.float()
                d[row, :r] = layer.d.float() * layer.scale.float()
        layers[name] = LayerPatch(u, d, torch.ones((), device=device))
    return Patch(layers)


def active_patches() -> tuple[Patch, ...]:
    """The patches active in the current context."""
    return _ACTIVE.get()


class PatchEngine:
    """Installs one forward hook per edited module of a model (once) and activates patches.

    Use :meth:`for_model` to get the engine of a model; hooks are shared by all users and read
    the per-context active patch stack, so installing them never changes outputs by itself.
    """

    _engines: weakref.WeakKeyDictionary[nn.Module, PatchEngine] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, model: nn.Module) -> None:
        self._model_ref = weakref.ref(model)
        self._hooked: dict[str, torch.utils.hooks.RemovableHandle] = {}

    @classmethod
    def for_model(cls, model: nn.Module, module_names: Sequence[str]) -> PatchEngine:
        """The model's engine, with hooks on ``module_names`` (added if missing)."""
        with cls._lock:
            engine = cls._engines.get(model)
            if engine is None:
                engine = cls(model)
                cls._engines[model] = engine
            engine._install(module_names)
            return engine

    def _install(self, module_names: Sequence[str]) -> None:
        model = self._model_ref()
        for name in module_names:
            if name not in self._hooked:
                module = model.get_submodule(name)
                self._hooked[name] = module.register_forward_hook(_make_hook(name))

    @property
    def hooked_modules(self) -> tuple[str, ...]:
        return tuple(self._hooked)

    @staticmethod
    @contextlib.contextmanager
    def activate(patches: Sequence[Patch] | Patch | None) -> Iterator[None]:
        """Make ``patches`` (and only them) active in this context for the ``with`` body."""
        if patches is None:
            patches = ()
        elif isinstance(patches, Patch):
            patches = (patches,)
        token = _ACTIVE.set(combine_patches(tuple(patches)))
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    @staticmethod
    @contextlib.contextmanager
    def capture(module_names: Sequence[str]) -> Iterator[Capture]:
        """Record inputs of ``module_names`` and add zero probes to their outputs for gradients."""
        cap = Capture(frozenset(module_names))
        token = _CAPTURE.set(cap)
        try:
            yield cap
        finally:
            _CAPTURE.reset(token)


def _make_hook(name: str):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        patches = _ACTIVE.get()
        capture = _CAPTURE.get()
        if not patches and capture is None:
            return None
        x = inputs[0]
        result = output
        for patch in patches:
            layer = patch.layers.get(name)
            if layer is not None:
                result = result + layer.output_delta(x).to(result.dtype)
        if capture is not None and name in capture.names:
            capture.inputs[name] = x.detach()
            probe = torch.zeros_like(result, requires_grad=True)
            capture.probes[name] = probe
            result = result + probe
        return result

    return hook
