"""Section 3: backbone footprints, bytes per edit, memory per session, patch compression.

A session in our design holds its edits' low-rank factors and shares one backbone; the design
this replaces keeps a weight copy per session (an original and an edited model). Quantized
weights cannot take a float delta in place, so such a copy is a float model (fp32 here).
Compression: factors stored in bf16, and each layer's update ``scale * D^T U`` truncated by SVD
to rank ``k`` (:meth:`~instructedit.editing.patches.Patch.truncated`). Each variant is measured by
the evaluator of ``eval`` (:class:`~instructedit.evaluate.runner.Evaluator`, as sections 4 and 6),
which scores the stored patches (:class:`StoredEdits`) as it scores any editor's; the editor stores
edits at :data:`~instructedit.defaults.DEFAULT_PATCH_RANK`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..data.records import EditRecord
from ..editing.editor import Edit, Editor
from ..editing.patches import Patch
from ..evaluate.runner import Evaluator
from .stats import summarize
from .workload import eval_config, summary_scores

log = logging.getLogger(__name__)
MIB = 2 ** 20
COMPRESSION_BATCH = 8
"""Records per evaluator pass in the compression study (each with its own stored patch)."""


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


def _request(record: EditRecord) -> tuple[str, str, str]:
    """(prompt, subject, target) of ``record`` as the evaluator asks an editor that edits one
    record at a time for its patches (:meth:`Evaluator._edit_one_by_one`)."""
    return record.prompt.strip(), (record.subject or "").strip(), record.target_new.strip()


class StoredEdits:
    """Edits made already, as an editor of the evaluator: each record's patch is the stored
    one (one storage variant of its edit), so the evaluator scores storage, not editing.

    It edits one record at a time (``patches``), any record (``needs_subject`` False); its
    ``latency_ms`` is a look-up and means nothing."""

    needs_subject = False
    patch_rank = None

    def __init__(self, editor: Editor, name: str, records: Sequence[EditRecord],
                 patches: Sequence[Patch]) -> None:
        self.name = name
        self.backbone = editor.backbone
        self.module_names = editor.module_names
        self.use_instructions = editor.use_instructions
        self._patches = {_request(r): p for r, p in zip(records, patches, strict=True)}

    def patches(self, requests: Sequence[tuple[str, str, str]]) -> list[Patch]:
        return [self._patches[request] for request in requests]


def compression(editor: Editor, records: Sequence[EditRecord], edits: Sequence[Edit],
                ranks: Sequence[int]) -> dict:
    """Bytes and scores of each storage variant of the same full-rank ``edits`` (``edits[i]``
    is the edit of ``records[i]``): every variant measured by the evaluator on ``records``."""
    variants: dict[str, list[Patch]] = {}
    for edit in edits:
        for name, patch in _variants(edit.patch, ranks).items():
            variants.setdefault(name, []).append(patch)
    out = {}
    for name, patches in variants.items():
        stored = StoredEdits(editor, name, records, patches)
        result = Evaluator(editor.backbone, stored, eval_config(COMPRESSION_BATCH)).run(
            records, f"bench {name}")
        out[name] = {"bytes": summarize([p.nbytes() for p in patches]).to_dict(),
                     **summary_scores(result.summary)}
    return {"edits": len(edits), "variants": out}
