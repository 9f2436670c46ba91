"""Section 3: backbone footprints, bytes per edit, memory per session, patch compression.

A session in our design holds its edits' low-rank factors and shares one backbone; the design
this replaces keeps a weight copy per session (an original and an edited model). Quantized
weights cannot take a float delta in place, so such a copy is a float model (fp32 here).
Compression: factors stored in bf16, and each layer's update ``scale * D^T U`` truncated by SVD
to rank ``k`` (:meth:`~instructedit.editing.patches.Patch.truncated`), scored with the same functions as
everything else; the editor stores edits at :data:`~instructedit.defaults.DEFAULT_PATCH_RANK`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..editing.editor import Edit
from ..editing.patches import Patch, PatchEngine
from ..model.backbone import Backbone
from .stats import summarize
from .workload import CaseBatches, case_batches, locality_argmax, score_case

log = logging.getLogger(__name__)
MIB = 2 ** 20


def footprints(backbones: dict[str, int], goal_share: float) -> dict:
    """Footprint per quantization mode and the 4-bit share of fp32."""
    out: dict = {"bytes": dict(backbones), "mib": {k: round(v / MIB, 1) for k, v in backbones.items()}}
    if "none" in backbones:
        out["share_of_fp32"] = {k: round(v / backbones["none"], 4) for k, v in backbones.items()}
    if "none" in backbones and "4bit" in backbones:
        share = backbones["4bit"] / backbones["none"]
        out.update(goal=goal_share, met=share <= goal_share)
    return out


def edit_sizes(edits: Sequence[Edit], goal_kib: float) -> dict:
    """Bytes and factor rows (rank) per edit; an edit should cost kilobytes."""
    nbytes = summarize([e.patch.nbytes() for e in edits])
    rows = summarize([max(layer.u.shape[0] for layer in e.patch.layers.values()) for e in edits])
    first = edits[0].patch
    dtypes = sorted({str(layer.u.dtype).replace("torch.", "") for layer in first.layers.values()})
    return {"bytes": nbytes.to_dict(), "kib": nbytes.scaled(1 / 1024).to_dict(),
            "rows": rows.to_dict(), "modules": len(first.layers), "factor_dtypes": dtypes,
            "goal_kib": goal_kib, "met": nbytes.median / 1024 <= goal_kib}


def sessions(footprint: int, float_copy_bytes: int, edit_bytes: float, edits_per_session: int = 10,
             session_counts: Sequence[int] = (1, 10)) -> dict:
    """Memory of S sessions with E edits each: shared backbone + patches vs a model copy each."""
    rows = []
    for s in session_counts:
        ours = footprint + s * edits_per_session * edit_bytes
        copies_same = footprint + s * footprint
        copies_float = footprint + s * float_copy_bytes
        rows.append({"sessions": s, "edits_per_session": edits_per_session,
                     "patches_bytes": int(ours), "weight_copy_bytes": int(copies_same),
                     "float_copy_bytes": int(copies_float),
                     "patch_share_of_copy": round(ours / copies_same, 4)})
    return {"per_session_patch_bytes": int(edits_per_session * edit_bytes),
            "per_session_copy_bytes": footprint, "per_session_float_copy_bytes": float_copy_bytes,
            "rows": rows}


def _variants(patch: Patch, ranks: Sequence[int]) -> dict[str, Patch]:
    """Full rank, full rank in bf16, rank k for each k, and the smallest rank in bf16."""
    out = {"full rank": patch, "full rank bf16": patch.to(torch.bfloat16)}
    for k in sorted(ranks):
        out[f"rank {k}"] = patch.truncated(k)
    if ranks:
        k = min(ranks)
        out[f"rank {k} bf16"] = out[f"rank {k}"].to(torch.bfloat16)
    return out


def compression(backbone: Backbone, edits: Sequence[Edit], cases_batches: Sequence[CaseBatches],
                ranks: Sequence[int]) -> dict:
    """Bytes, reliability and locality of each storage variant of the same full-rank edits."""
    model = backbone.model
    table: dict[str, dict[str, list[float]]] = {}
    for edit, batches in zip(edits, cases_batches, strict=True):
        pre = locality_argmax(model, batches)
        for name, patch in _variants(edit.patch, ranks).items():
            with PatchEngine.activate(patch):
                scores = score_case(model, CaseBatches(batches.edit, None, batches.locality), pre)
            row = table.setdefault(name, {"bytes": [], "reliability": [], "locality": []})
            row["bytes"].append(patch.nbytes())
            row["reliability"].append(scores.reliability)
            if scores.locality is not None:
                row["locality"].append(scores.locality)
    out = {}
    for name, row in table.items():
        out[name] = {"bytes": summarize(row["bytes"]).to_dict(),
                     "reliability": round(sum(row["reliability"]) / len(row["reliability"]), 4),
                     "locality": (round(sum(row["locality"]) / len(row["locality"]), 4)
                                  if row["locality"] else None)}
    return {"edits": len(edits), "variants": out}


def compression_batches(backbone: Backbone, cases) -> list[CaseBatches]:
    return [case_batches(backbone.tokenizer, case, backbone.device) for case in cases]
