"""Load the shared model and editors once at start-up, with fallbacks and a status line."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..editing.checkpoint import CheckpointError
from ..editing.editor import DEFAULT_PATCH_RANK, Editor
from ..editing.editors import GRADIENT, ROME, load_editor
from ..model.backbone import Backbone, load_backbone
from .config import (
    COMPARE_BASELINE,
    COMPARE_BOTH,
    COMPARE_NONE,
    COMPARE_ROME,
    DEFAULT_BASELINE,
    DEFAULT_EDITOR,
    FALLBACK_STEP_SIZE,
    AppConfig,
)

log = logging.getLogger(__name__)


@dataclass
class LoadedModels:
    """The shared backbone, the InstructEdit editor, the optional baseline and ROME comparison
    editors, and start-up notes."""

    backbone: Backbone
    editor: Editor
    baseline: Editor | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rome: Editor | None = None


def resolve_quant(quant: str | None, device: str) -> str:
    """The quantization to use: as given, else 4bit on CPU and none on a CUDA GPU."""
    if quant:
        return quant
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "none" if on_gpu else "4bit"


def load_app_editor(spec: str, backbone: Backbone, *, role: str, default: str,
                    use_instructions: bool, patch_rank: int | None = DEFAULT_PATCH_RANK,
                    ) -> tuple[Editor, str | None]:
    """Load an editor checkpoint; ``none`` gives a plain gradient step.

    The shipped default falling short (missing, still being written, another model) gives a
    plain gradient step and a warning; a folder named explicitly must load or the app stops.
    """
    if spec.strip().lower() == "none":
        return load_editor(GRADIENT, backbone, step_size=FALLBACK_STEP_SIZE,
                           use_instructions=use_instructions), None
    try:
        return load_editor(spec, backbone, patch_rank=patch_rank), None
    except CheckpointError as exc:
        if Path(spec).resolve() != Path(default).resolve():
            raise
        warning = (f"{role} checkpoint not usable ({exc}); using one plain gradient step "
                   f"(size {FALLBACK_STEP_SIZE}) instead")
        log.warning(warning)
        return load_editor(GRADIENT, backbone, step_size=FALLBACK_STEP_SIZE,
                           use_instructions=use_instructions), warning


def load_models(config: AppConfig) -> LoadedModels:
    """Load everything the app shares between users (once)."""
    start = time.perf_counter()
    quant = resolve_quant(config.quant, config.device)
    backbone = load_backbone(config.model, quant, device=config.device, fast_4bit=config.fast_4bit)
    editor, warning = load_app_editor(config.editor, backbone, role="InstructEdit editor",
                                  default=str(DEFAULT_EDITOR), use_instructions=True,
                                  patch_rank=config.patch_rank)
    editor = editor.with_schedule_overrides(*config.schedule_overrides)
    warnings = [warning] if warning else []
    show_baseline, show_rome = compared_editors(config)
    baseline = rome = None
    if show_baseline:
        baseline, warning = load_app_editor(config.baseline_editor, backbone, role="Baseline editor",
                                        default=str(DEFAULT_BASELINE), use_instructions=False,
                                        patch_rank=config.patch_rank)
        baseline = baseline.with_schedule_overrides(*config.schedule_overrides)
        if baseline.use_instructions:
            warnings.append(f"the baseline editor {baseline.name!r} was trained with instructions")
        warnings += [warning] if warning else []
    if show_rome:
        rome, warning = load_rome(backbone)
        warnings += [warning] if warning else []
    return LoadedModels(backbone, editor, baseline, warnings, time.perf_counter() - start, rome=rome)


def compared_editors(config: AppConfig) -> tuple[bool, bool]:
    """Whether the baseline and ROME are shown (``--compare``; ``--baseline-editor none`` hides
    the baseline, ``--baseline-editor rome`` means ``--compare rome``)."""
    spec = config.baseline_editor.strip().lower()
    if spec == ROME:
        return False, config.compare != COMPARE_NONE
    return (config.compare in (COMPARE_BASELINE, COMPARE_BOTH) and spec != "none",
            config.compare in (COMPARE_ROME, COMPARE_BOTH))


def load_rome(backbone: Backbone) -> tuple[Editor | None, str | None]:
    """ROME on ``backbone`` with its key covariance ready (estimated once, then cached on disk,
    so the first edit is not the slow one); ``None`` and a warning when it cannot be had."""
    start = time.perf_counter()
    rome = load_editor(ROME, backbone)
    try:
        rome.covariance()
    except (OSError, ValueError, RuntimeError) as exc:
        warning = f"ROME is not shown: its key covariance could not be estimated ({exc})"
        log.warning(warning)
        return None, warning
    log.info("ROME ready (layer %d, key covariance in %.1f s)", rome.layer, time.perf_counter() - start)
    return rome, None


def describe_editor(editor: Editor) -> str:
    """``name`` plus its training steps when the checkpoint records them."""
    steps = (editor.metadata.get("provenance") or {}).get("steps")
    return f"{editor.name} ({steps:,} training steps)" if isinstance(steps, int) else editor.name


def status_line(models: LoadedModels) -> str:
    """Markdown: model, architecture, quantization, memory footprint, device, editors, warnings."""
    info = models.backbone.info()
    quant = {"none": "none (float)", "8bit": "8-bit (bitsandbytes int8)",
             "4bit": "4-bit (bitsandbytes nf4)"}.get(info["quantization"], info["quantization"])
    parts = [f"**Model** {info['model_id']}",
             f"**architecture** {info['family']} ({info['parameters'] / 1e6:.0f} M parameters, "
             f"{info['num_layers']} layers)",
             f"**quantization** {quant}",
             f"**memory** {info['footprint_bytes'] / 2**20:.0f} MiB",
             f"**device** {info['device']}",
             f"**editor** {describe_editor(models.editor)}",
             f"**baseline** {describe_editor(models.baseline) if models.baseline else 'hidden'}"]
    if models.rome is not None:
        parts.append(f"**ROME** layer {getattr(models.rome, 'layer', '?')} MLP")
    line = " · ".join(parts)
    for warning in models.warnings:
        line += f"  \n⚠ **Warning:** {warning}."
    return line
