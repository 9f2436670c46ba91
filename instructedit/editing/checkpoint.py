"""Editor checkpoints: a folder with ``editor.safetensors`` and ``editor.json``; no pickle.

The JSON records the backbone the editor was trained for (id, family, sizes), the edited module
names and shapes, the editor hyper-parameters, whether it uses instructions and its training
provenance. Loading validates all of it against the backbone and refuses a mismatch with a
message that names both sides.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserFacingError
from ..io_utils import atomic_file, atomic_write_text, sha256_file
from ..model.backbone import Backbone
from .mend import EditorConfig, MendNetwork

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "editor.safetensors"
CONFIG_FILE = "editor.json"
MAX_CHECKPOINT_BYTES = 16 * 1024 * 1024


class CheckpointError(UserFacingError, ValueError):
    """A checkpoint is missing, damaged, or belongs to another backbone."""


def backbone_signature(backbone: Backbone) -> dict:
    """What a checkpoint records about its backbone."""
    info = backbone.info()
    return {"model_id": backbone.model_id, "family": backbone.family,
            "model_type": info["model_type"], "hidden_size": info["hidden_size"],
            "num_layers": info["num_layers"], "vocab_size": info["vocab_size"]}


def save_editor_checkpoint(path, network: MendNetwork, backbone: Backbone, *, name: str,
                           use_instructions: bool, provenance: dict | None = None,
                           dtype: torch.dtype = torch.bfloat16,
                           edit_schedule: dict | None = None) -> Path:
    """Write the checkpoint folder atomically (each file via a temp file and rename).

    ``edit_schedule``: how edits apply the network's update (see
    :class:`~instructedit.editing.editor.EditSchedule`); omitted: the trained single step."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in network.state_dict().items():
        keep_fp32 = key.startswith("log_lr") or ".norm." in key
        tensors[key] = value.detach().to(torch.float32 if keep_fp32 else dtype).contiguous().cpu()
    config = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "use_instructions": use_instructions,
        "backbone": backbone_signature(backbone),
        "modules": {n: list(s) for n, s in network.module_shapes.items()},
        "editor": network.config.to_dict(),
        "parameters": network.num_parameters(),
        "provenance": provenance or {},
    }
    if edit_schedule:
        config["edit_schedule"] = dict(edit_schedule)
    # Everything that can fail on the data is done before the first file is replaced; the config,
    # written last, records the weights' checksum, so a folder whose two files come from two
    # different saves (a crash between the renames) is refused on load instead of trusted.
    with atomic_file(folder / WEIGHTS_FILE) as weights_tmp:
        save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
        config["weights_sha256"] = sha256_file(weights_tmp)
        text = json.dumps(config, indent=2) + "\n"
    atomic_write_text(folder / CONFIG_FILE, text)
    size = (folder / WEIGHTS_FILE).stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        log.warning("checkpoint %s is %.1f MiB, above the 16 MiB budget", folder, size / 2**20)
    return folder


def read_checkpoint_config(path) -> dict:
    """The parsed ``editor.json`` of a checkpoint folder, with clear errors."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"editor checkpoint {str(folder)!r} does not exist or is not a folder")
    cfg_file = folder / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder}: missing {CONFIG_FILE}; not an editor checkpoint")
    try:
        config = json.loads(cfg_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file}: invalid JSON ({exc})") from exc
    for key in ("format_version", "backbone", "modules", "editor"):
        if key not in config:
            raise CheckpointError(f"{cfg_file}: missing field {key!r}")
    if config["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_file}: format version {config['format_version']} is not supported "
                              f"(this version reads {FORMAT_VERSION})")
    return config


def write_edit_schedule(path, edit_schedule: dict, calibration: dict | None = None) -> Path:
    """Store a calibrated edit schedule (and how it was chosen) in a checkpoint's ``editor.json``;
    the weights are not touched (their checksum stays valid). Atomic: a failure leaves the file
    as it was."""
    folder = Path(path)
    config = read_checkpoint_config(folder)
    config["edit_schedule"] = dict(edit_schedule)
    if calibration is not None:
        config["edit_schedule_calibration"] = calibration
    else:
        config.pop("edit_schedule_calibration", None)
    return atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def validate_against_backbone(config: dict, backbone: Backbone, *, strict: bool = True) -> None:
    """Refuse a checkpoint whose backbone or edited modules do not match ``backbone``."""
    saved = config["backbone"]
    actual = backbone_signature(backbone)
    for key in ("family", "model_type", "hidden_size", "num_layers", "vocab_size"):
        if saved.get(key) != actual[key]:
            raise CheckpointError(
                f"this editor was trained for {saved.get('model_id')} ({key}={saved.get(key)}), "
                f"but the loaded model is {actual['model_id']} ({key}={actual[key]})")
    if strict and saved.get("model_id") != actual["model_id"]:
        raise CheckpointError(
            f"this editor was trained for {saved.get('model_id')!r}, but the loaded model is "
            f"{actual['model_id']!r}; pass strict=False to use it on a model of the same shape")
    for name, shape in config["modules"].items():
        try:
            module = backbone.module(name)
        except AttributeError:
            raise CheckpointError(f"edited module {name!r} of the checkpoint does not exist in "
                                  f"{actual['model_id']}") from None
        real = list(backbone.adapter.in_out_features(module))
        if real != list(shape):
            raise CheckpointError(f"edited module {name}: checkpoint shape {shape}, model shape {real}")


def load_editor_checkpoint(path, backbone: Backbone, *, strict: bool = True) -> tuple[MendNetwork, dict]:
    """Load and validate a checkpoint; returns the network (float32, eval) and its config."""
    folder = Path(path)
    config = read_checkpoint_config(folder)
    validate_against_backbone(config, backbone, strict=strict)
    try:
        editor_config = EditorConfig(**config["editor"])
    except TypeError as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad editor settings ({exc})") from exc
    shapes = {name: tuple(shape) for name, shape in config["modules"].items()}
    network = MendNetwork(shapes, editor_config)
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file():
        raise CheckpointError(f"{folder}: missing {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_file}: damaged or truncated safetensors file ({exc})") from exc
    expected = network.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights_file}: tensors do not match the config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{weights_file}: tensor {key} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(expected[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{weights_file}: tensor {key} holds NaN or inf values")
    recorded = config.get("weights_sha256")
    if recorded is not None and recorded != sha256_file(weights_file):
        raise CheckpointError(f"{weights_file} does not match {CONFIG_FILE} (its checksum differs): "
                              "the files come from different saves or were changed; save it again")
    network.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    network.eval()
    return network, config
