"""Constrained fine-tuning (FT-L style) as an editor with the interface of the other editors.

An edit of ``(prompt, target)`` runs Adam for at most ``max_steps`` steps of ``lr`` on the
target's teacher-forced NLL after the plain prompt (no instructions), optimising the weights of
the edited MLP matrices: every MLP matrix of the blocks the shipped editors edit
(:meth:`~instructedit.model.backbone.Backbone.edited_module_names`), or only the MLP output matrix of
one block (``layer``, the matrix ROME edits). After every step each weight stays within ``linf``
of its original value (the norm bound of constrained fine-tuning). A record stops once every
target token is the greedy prediction (``stop_when_greedy``).

The base weights are never written: the optimised variable is the weight change ``dW`` itself,
added to the module's output by a per-context hook (``out + x dW^T``,
:func:`~instructedit.model.adapters.intervene`). Since ``d out / d dW == d out / d W`` and Adam starts
from zero moments, this is step for step the fine-tuning of ``W`` (``W_t = W_0 + dW_t``,
clamped the same way), on any module the adapter knows (Linear, GPT-2 Conv1D, 8-bit and 4-bit
bitsandbytes layers: only gradients with respect to activations pass through them, as for the
other editors), and other threads using the same model see nothing while it runs.

The change becomes a :class:`~instructedit.editing.patches.Patch` (``dW = D^T U``) **exactly**: with
``r = min(in, out)``, ``U = dW`` and ``D = I_out`` when ``out <= in``, else ``U = I_in`` and
``D = dW^T`` (a product with an identity is exact in floating point, so the patch adds the very
``x dW^T`` the optimisation saw). ``rank`` set: the best rank-``rank`` approximation of ``dW``
(truncated SVD, :meth:`~instructedit.editing.patches.LayerPatch.truncated`), smaller but approximate and
no longer guaranteed within ``linf``. Undo, stacking and per-session isolation are those of every
patch. An exact patch is large (``in * out + r^2`` floats per module, about 4.8 MB per matrix of
SmolLM2-135M): it is a baseline, not a compact edit.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..model.adapters import ArchitectureAdapter, intervene
from ..model.backbone import Backbone
from ..scoring import AnswerBatch, full_model_answer_logits, score_answers, tokenize_answers
from .editor import MAX_TARGET_TOKENS, Edit, EditRequest, validate_request
from .patches import LayerPatch, Patch, PatchEngine

__all__ = ["FineTuneConfig", "FineTuneResult", "FineTuneEditor", "fine_tune", "delta_patch"]


@dataclass(frozen=True)
class FineTuneConfig:
    """Settings of a constrained fine-tuning edit.

    Attributes:
        lr: Adam's learning rate.
        max_steps: optimiser steps at most (per edit).
        linf: every weight stays within ``linf`` of its original value after each step (an
            L-infinity bound on the weight change); None: unbounded.
        rank: None keeps the change exactly (full-rank factors); k keeps its best rank-k
            approximation (truncated SVD; not guaranteed within ``linf`` any more).
        layer: None: every MLP matrix of the blocks the shipped editors edit; an index (negative
            counts from the top): only that block's MLP output matrix.
        stop_when_greedy: a record stops once every target token is the greedy prediction.
    """

    lr: float = 1e-4
    max_steps: int = 30
    linf: float | None = 1e-3
    rank: int | None = None
    layer: int | None = None
    stop_when_greedy: bool = True

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.max_steps < 1:
            raise ValueError(f"lr must be positive and max_steps at least 1, got {self.lr}, {self.max_steps}")
        if self.linf is not None and not self.linf > 0:
            raise ValueError(f"linf must be positive (or None: unbounded), got {self.linf}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be at least 1 (or None: exact), got {self.rank}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FineTuneResult:
    """One fine-tuning run of a batch of independent edits (row ``i``: edit ``i``)."""

    deltas: dict[str, torch.Tensor]  # name -> (B, out, in) float32 weight changes
    steps: list[int]                 # optimiser steps each edit took
    nll_before: list[float]          # target NLL (mean per token) before
    nll_after: list[float]           # the same at the last evaluated step

    def patch(self, row: int, rank: int | None = None) -> Patch:
        """Edit ``row``'s change as a patch (exact; ``rank``: truncated, see :func:`delta_patch`)."""
        return delta_patch({name: delta[row] for name, delta in self.deltas.items()}, rank)


def delta_patch(deltas: Mapping[str, torch.Tensor], rank: int | None = None) -> Patch:
    """The patch adding ``deltas`` ((out, in) weight changes by module name) to the weights.

    Exact: an identity factor on the smaller side (see the module docstring). ``rank``: each
    module's best rank-``rank`` approximation instead.
    """
    layers = {}
    for name, delta in deltas.items():
        delta = delta.detach().float()
        n_out, n_in = delta.shape
        one = torch.ones((), device=delta.device)
        if n_out <= n_in:
            layer = LayerPatch(delta.clone(), torch.eye(n_out, device=delta.device), one)
        else:
            layer = LayerPatch(torch.eye(n_in, device=delta.device), delta.t().contiguous(), one)
        layers[name] = layer if rank is None else layer.truncated(rank)
    patch = Patch(layers)
    patch.check_finite()
    return patch


def fine_tune(model: nn.Module, module_names: Sequence[str], batch: AnswerBatch,
              config: FineTuneConfig, *, active: Sequence[Patch] = ()) -> FineTuneResult:
    """Constrained fine-tuning of ``module_names`` on every row of ``batch``, each row alone.

    Row ``i`` has its own weight change, added by a hook to the modules' outputs in row ``i``
    only, so the rows are independent (Adam is elementwise): one batch equals one run per row.
    ``active`` patches stay applied (edits stack). ``model``'s weights are never written.
    """
    device = batch.input_ids.device
    n = batch.size
    deltas: dict[str, torch.Tensor] = {}
    for name in module_names:
        n_in, n_out = ArchitectureAdapter.in_out_features(model.get_submodule(name))
        deltas[name] = torch.zeros(n, n_out, n_in, device=device, requires_grad=True)

    def add(delta: torch.Tensor):
        def edit(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return out + torch.bmm(x, delta.transpose(1, 2).to(x.dtype)).to(out.dtype)
        return edit

    hooks = {name: add(delta) for name, delta in deltas.items()}
    optimizer = torch.optim.Adam(list(deltas.values()), lr=config.lr)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    frozen: dict[str, torch.Tensor] = {}  # the changes as the stopped rows left them
    steps = torch.zeros(n, dtype=torch.long, device=device)
    nll_before = nll = None
    with PatchEngine.activate(list(active)), intervene(model, hooks):
        while True:
            with torch.enable_grad():
                scores = score_answers(full_model_answer_logits(model, batch), batch)
            nll = scores.mean_nll.detach()
            nll_before = nll if nll_before is None else nll_before
            if config.stop_when_greedy:
                newly = ~done & (scores.token_accuracy >= 1.0)
                if bool(newly.any()):
                    done |= newly
                    frozen = {name: delta.detach().clone() for name, delta in deltas.items()}
            if bool(done.all()) or int(steps.max()) >= config.max_steps:
                break
            optimizer.zero_grad(set_to_none=True)
            (scores.mean_nll * ~done).sum().backward()
            optimizer.step()
            steps += ~done
            with torch.no_grad():
                for name, delta in deltas.items():
                    if config.linf is not None:
                        delta.clamp_(-config.linf, config.linf)
                    if frozen:  # Adam's momentum moves stopped rows too: put them back
                        delta.copy_(torch.where(done[:, None, None], frozen[name], delta))
    return FineTuneResult({name: delta.detach() for name, delta in deltas.items()},
                          steps.cpu().tolist(), nll_before.cpu().tolist(), nll.cpu().tolist())


def _prompt_target(request: Any) -> tuple[str, str]:
    """``(prompt, target)`` of a ``(prompt, subject, target)`` tuple or a request object."""
    if hasattr(request, "prompt") and hasattr(request, "target"):
        return request.prompt, request.target
    prompt, *_, target = request
    return prompt, target


class FineTuneEditor:
    """Constrained fine-tuning bound to one backbone, with the interface of
    :class:`~instructedit.editing.editor.Editor` (see the module docstring).

    ``module_names``: the matrices to fine-tune (default: as ``config.layer`` says).
    """

    name = "finetune"
    use_instructions = False
    needs_subject = False

    def __init__(self, backbone: Backbone, config: FineTuneConfig | None = None, *,
                 module_names: Sequence[str] | None = None) -> None:
        self.backbone = backbone
        self.config = config or FineTuneConfig()
        self.patch_rank = self.config.rank
        if module_names is not None:
            self.module_names = list(module_names)
        elif self.config.layer is None:
            self.module_names = backbone.edited_module_names()
        else:
            n = backbone.adapter.num_layers(backbone.model)
            layer = self.config.layer + n if self.config.layer < 0 else self.config.layer
            self.module_names = [backbone.adapter.mlp_out_name(layer, backbone.model)]
        self.engine = PatchEngine.for_model(backbone.model, self.module_names)
        self.metadata = {"method": "constrained fine-tuning (FT-L)", "modules": self.module_names,
                         "config": self.config.to_dict()}

    def _batch(self, prompts: Sequence[str], targets: Sequence[str]) -> AnswerBatch:
        return tokenize_answers(self.backbone.tokenizer, [p.strip() for p in prompts],
                                [t.strip() for t in targets],
                                max_answer_tokens=MAX_TARGET_TOKENS).to(self.backbone.device)

    def fine_tune(self, prompts: Sequence[str], targets: Sequence[str],
                  active: Sequence[Patch] = ()) -> FineTuneResult:
        """Fine-tune every ``(prompt, target)`` independently, in one batch (see :func:`fine_tune`)."""
        return fine_tune(self.backbone.model, self.module_names, self._batch(prompts, targets),
                         self.config, active=active)

    def edit(self, request: EditRequest, active: Sequence[Edit] = ()) -> Edit:
        """The fine-tuning edit of ``request`` (its plain prompt) with the ``active`` edits
        applied (they stack), as :meth:`~instructedit.editing.editor.Editor.edit`.

        Raises :class:`~instructedit.editing.editor.EditError` for bad input and
        :class:`~instructedit.editing.patches.NonFiniteEditError` for a NaN/inf result; in both cases
        nothing changes.
        """
        start = time.perf_counter()
        validate_request(request, self.backbone.tokenizer)
        prompt = request.prompt.strip()
        result = self.fine_tune([prompt], [request.target], [e.patch for e in active])
        patch = result.patch(0, self.config.rank)
        latency = (time.perf_counter() - start) * 1000
        return Edit(request, prompt, patch, self.name, self.backbone.model_id, latency)

    def patches(self, requests: Sequence[Any], *, batch_size: int = 8) -> list[Patch]:
        """One patch per ``(prompt, subject, target)`` (the subject is not used), each from the
        unedited model; ``batch_size`` edits are fine-tuned at once."""
        pairs = [_prompt_target(r) for r in requests]
        out: list[Patch] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start: start + batch_size]
            result = self.fine_tune([p for p, _ in chunk], [t for _, t in chunk])
            out += [result.patch(i, self.config.rank) for i in range(len(chunk))]
        return out
