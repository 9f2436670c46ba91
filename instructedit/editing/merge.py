"""Merge edits into a standalone model folder (a float copy; the shared backbone is untouched).

The weight delta of every :class:`~instructedit.editing.patches.LayerPatch` (``dW = scale * D^T U``, in
(out, in) orientation) is summed per module and added to a float copy of the model: a deep copy
when the backbone is unquantized, a fresh float32 load of ``backbone.source`` when it is 8/4-bit.
The folder (``save_pretrained`` + tokenizer + ``instructedit-model.json``) is written into a
temporary folder next to ``out_dir`` and renamed into place, so a crash never leaves a half
written model behind.
"""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io_utils import atomic_folder
from ..model.backbone import Backbone, BackboneError
from .patches import Patch

log = logging.getLogger(__name__)

MODEL_MARKER = "instructedit-model.json"

__all__ = ["MODEL_MARKER", "merge_patches", "summed_deltas", "float_copy"]


def _as_patch(item: Any) -> Patch:
    """A :class:`Patch` from a Patch or an :class:`~instructedit.editing.editor.Edit`."""
    patch = getattr(item, "patch", item)
    if not isinstance(patch, Patch):
        raise TypeError(f"expected a Patch or an Edit, got {type(item).__name__}")
    return patch


def _edit_record(item: Any) -> dict:
    """What the marker file records about one merged edit."""
    patch = _as_patch(item)
    record: dict[str, Any] = {"modules": sorted(patch.layers)}
    request = getattr(item, "request", None)
    if request is not None:
        record.update({
            "id": getattr(item, "id", None),
            "editor": getattr(item, "editor_name", None),
            "task": request.task,
            "prompt": request.prompt,
            "target": request.target,
            "instruction": request.instruction,
            "wrapped_input": getattr(item, "wrapped_input", None),
            "created_at": getattr(item, "created_at", None),
        })
    return record


def summed_deltas(patches: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Per module, the float32 sum of the (out, in) deltas of ``patches`` (Patch or Edit)."""
    total: dict[str, torch.Tensor] = {}
    for item in patches:
        patch = _as_patch(item)
        patch.check_finite()
        for name, layer in patch.layers.items():
            delta = layer.delta_weight().detach().cpu()
            total[name] = delta if name not in total else total[name] + delta
    return total


def float_copy(backbone: Backbone) -> nn.Module:
    """A float model equal to the backbone's weights, safe to modify.

    Unquantized: a deep copy of ``backbone.model``. Quantized: the float32 original loaded
    again from ``backbone.source`` (quantized weights cannot be edited in place).
    """
    if backbone.config.quant == "none":
        model = copy.deepcopy(backbone.model)
    else:
        from transformers import AutoModelForCausalLM

        log.info("loading a float copy of %s from %s for merging", backbone.model_id, backbone.source)
        try:
            model = AutoModelForCausalLM.from_pretrained(backbone.source, dtype=torch.float32)
        except Exception as exc:
            raise BackboneError(f"could not load a float copy of {backbone.source!r} to merge into: "
                                f"{exc}") from exc
    model.to("cpu")
    model.requires_grad_(False)
    model.eval()
    return model


def merge_patches(backbone: Backbone, patches: Sequence[Any], out_dir, *, overwrite: bool = False,
                  metadata: dict | None = None) -> Path:
    """Write a model folder whose weights include the summed deltas of ``patches``.

    Args:
        backbone: the backbone the patches were computed for (never modified).
        patches: :class:`Patch` or :class:`~instructedit.editing.editor.Edit` objects (edits are
            recorded with their requests in ``instructedit-model.json``).
        out_dir: the folder to create; an existing non-empty folder needs ``overwrite=True``.
        metadata: extra JSON-serialisable fields for the marker file.

    Returns the folder path. Loading it with :func:`~instructedit.model.backbone.load_backbone` gives
    a model whose ``model_id`` is the base model's, so editors trained for the base still apply.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another folder or pass overwrite=True")
    deltas = summed_deltas(patches)
    model = float_copy(backbone)
    adapter = backbone.adapter
    for name, delta in deltas.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"patched module {name!r} does not exist in {backbone.model_id}") from None
        n_in, n_out = adapter.in_out_features(module)
        if tuple(delta.shape) != (n_out, n_in):
            raise ValueError(f"patch for {name} has shape {tuple(delta.shape)}, the module is "
                             f"(out={n_out}, in={n_in})")
        adapter.add_to_weight_(module, delta.to(module.weight.device))
    marker = {
        "format": "instructedit-merged-model",
        "model_id": backbone.model_id,
        "base_source": backbone.source,
        "base_quantization": backbone.config.quant,
        "family": backbone.family,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "modules": sorted(deltas),
        "edits": [_edit_record(p) for p in patches],
        **(metadata or {}),
    }
    with atomic_folder(out) as work:
        model.save_pretrained(work)
        backbone.tokenizer.save_pretrained(work)
        (work / MODEL_MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
    log.info("merged %d edit(s) into %d module(s): %s", len(patches), len(deltas), out)
    return out
