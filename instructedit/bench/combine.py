"""A prototype of combining active patches (proposed for :mod:`instructedit.patches`).

With N active edits the patch hook does N matmul pairs per edited module and token. All of them
add ``scale_i * (x U_i^T) D_i`` to the output, so they equal one pair on the row-concatenated
factors ``U = [U_1; ...; U_N]`` and ``D = [scale_1 D_1; ...; scale_N D_N]`` with scale 1. The
bench measures generation with the combined patch next to the patches as they are, to size the
gain; the core is not changed here.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..patches import LayerPatch, Patch


def combine_patches(patches: Sequence[Patch], dtype: torch.dtype | None = None) -> Patch:
    """One patch equal to the sum of ``patches`` (unbatched), factors optionally cast to ``dtype``."""
    names: dict[str, None] = {}
    for patch in patches:
        names.update(dict.fromkeys(patch.layers))
    layers = {}
    for name in names:
        parts = [p.layers[name] for p in patches if name in p.layers]
        if any(part.batched for part in parts):
            raise ValueError("only unbatched patches can be combined")
        u = torch.cat([part.u.float() for part in parts])
        d = torch.cat([part.d.float() * part.scale.float() for part in parts])
        if dtype is not None:
            u, d = u.to(dtype), d.to(dtype)
        layers[name] = LayerPatch(u, d, torch.ones((), dtype=torch.float32))
    return Patch(layers)
