"""Re-keying: an edit's update narrowed to the edit's own keys, as ROME narrows its update.

A MEND-style update of a matrix, ``x -> x U^T D``, answers every input ``x`` in proportion to its
overlap with the rows of ``U``. The editor builds ``U`` from the keys of the subject's tokens, but
its learned transform and the passes of an edit schedule leave components that also answer the
template's tokens ("... is located in the city of") in any sentence, which is how an edit of the
Eiffel Tower reaches the Louvre. Re-keying replaces ``U`` by the update that gives **the same
response on the edit's keyed inputs** ``X`` (the module's inputs at the subject's tokens, as the
edited model computes them) and the smallest response on the inputs the layer usually sees
(second moment ``C``):

    U' = (U X^T) (X C^-1 X^T)^+ X C^-1

so ``X U'^T = X U^T`` (up to the pseudo-inverse's cut) and any other input ``x`` gets
``x C^-1 X^T (X C^-1 X^T)^+ (X U^T)``: small unless ``x`` is like one of the edit's keys in the
whitened metric (ROME's ``(C^-1 k)^T / (k^T C^-1 k)`` for several keys). ``D`` is unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .patches import LayerPatch, Patch, PatchEngine

__all__ = ["capture_module_inputs", "rekey_layer", "rekey_patch"]

PINV_RTOL = 1e-6
"""Relative cut of the keys' Gram matrix pseudo-inverse (keys of a subject repeat across the
wrapped and the plain input, so the matrix is rank deficient)."""


@torch.no_grad()
def capture_module_inputs(model, module_names: Sequence[str], input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward pass of ``model``; the (B, T, in) input of each edited module in
    ``module_names`` (read by the patch engine's hooks, which an editor installs on its modules)."""
    with PatchEngine.capture(module_names) as capture:
        model(input_ids=input_ids, attention_mask=attention_mask)
    missing = [name for name in module_names if name not in capture.inputs]
    if missing:
        raise ValueError(f"no patch hook on {', '.join(missing)}: install the editor's modules first")
    return {name: capture.inputs[name] for name in module_names}


def rekey_layer(u: torch.Tensor, keys: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``u`` (rank, in) re-keyed on ``keys`` (n, in) with the inverse key second moment
    ``inverse`` (in, in); see the module doc. Rows of ``keys`` that are all zero are ignored."""
    keys = keys[keys.abs().sum(-1) > 0]
    if keys.numel() == 0:
        return u
    dtype = u.dtype
    x, uu, inv = keys.double(), u.double(), inverse.double()
    whitened = x @ inv                                   # (n, in)
    gram = whitened @ x.T                                # (n, n)
    response = uu @ x.T                                  # (rank, n)
    out = response @ torch.linalg.pinv(gram, rtol=PINV_RTOL, hermitian=True) @ whitened
    return out.to(dtype)


def rekey_patch(patch: Patch, keys: Mapping[str, Sequence[torch.Tensor]],
                inverses: Mapping[str, torch.Tensor]) -> Patch:
    """A batched ``patch`` with each row's ``U`` re-keyed on that row's keys (``keys[name][row]``,
    (n, in)); modules without an inverse second moment are left as they are."""
    layers = {}
    for name, layer in patch.layers.items():
        inverse = inverses.get(name)
        if inverse is None or name not in keys:
            layers[name] = layer
            continue
        if not layer.batched:
            raise ValueError("rekey_patch takes a batched patch (one row per edit)")
        inverse = inverse.to(layer.u.device, torch.float64)  # once per module, not per row
        u = torch.stack([rekey_layer(layer.u[row], keys[name][row], inverse) for row in range(layer.u.shape[0])])
        layers[name] = LayerPatch(u, layer.d, layer.scale)
    return Patch(layers)
