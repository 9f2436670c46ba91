"""One way to turn an editor name into an editor: ``load_editor(spec, backbone)``.

Specs: ``unedited`` (no editor: ``None``), ``gradient`` (one plain gradient step, an identity
MEND network), ``finetune`` (constrained fine-tuning of the edited MLP matrices,
:mod:`instructedit.editing.finetune`), ``rome`` (ROME, :mod:`instructedit.editing.rome`; ``rome:identity``,
``rome:data``, ``rome:generated`` pick its key covariance) or the folder of a trained checkpoint
(MEND multi-task or InstructEdit). The CLI, evaluation, benchmarks and the app all load through
here; each face keeps its own flag spelling (e.g. ``edit --editor none`` means a gradient step).
"""
from __future__ import annotations

from ..defaults import DEFAULT_PATCH_RANK, DEFAULT_STEP_SIZE
from ..model.backbone import Backbone
from .covariance import COVARIANCE_CHOICES
from .editor import Editor
from .finetune import FineTuneConfig, FineTuneEditor
from .rome import RomeConfig, RomeEditor

UNEDITED = "unedited"
GRADIENT = "gradient"
FINETUNE = "finetune"
ROME = "rome"
DEFAULT_RANK = "default"
"""``patch_rank`` value meaning: full rank for a gradient step and fine-tuning,
``DEFAULT_PATCH_RANK`` otherwise."""


def load_editor(spec: str, backbone: Backbone, *, step_size: float | None = None,
                patch_rank: int | None | str = DEFAULT_RANK, use_instructions: bool = True):
    """The editor named by ``spec`` bound to ``backbone`` (``None`` for ``unedited``).

    ``step_size``: the gradient step's size (default ``DEFAULT_STEP_SIZE``); ``patch_rank``: the
    rank each edit is kept at (fine-tuning: ``FineTuneConfig.rank``); ``use_instructions``:
    whether a gradient step reads the wrapped input. Raises ValueError for a non-positive step
    and CheckpointError for a bad checkpoint.
    """
    key = spec.strip()
    name = key.lower()
    if name == UNEDITED:
        return None
    if name == GRADIENT:
        step = DEFAULT_STEP_SIZE if step_size is None else step_size
        if not step > 0:
            raise ValueError(f"the step size must be positive, got {step}")
        rank = None if patch_rank == DEFAULT_RANK else patch_rank
        return Editor.untrained(backbone, step_size=step, use_instructions=use_instructions,
                                patch_rank=rank)
    if name == FINETUNE:
        rank = None if patch_rank == DEFAULT_RANK else patch_rank
        return FineTuneEditor(backbone, FineTuneConfig(rank=rank))
    if name == ROME or name.startswith(ROME + ":"):
        covariance = name.partition(":")[2] or "auto"
        if covariance not in COVARIANCE_CHOICES:
            raise ValueError(f"unknown ROME covariance {covariance!r} in {spec!r}; choose one of "
                             + ", ".join(f"rome:{c}" for c in COVARIANCE_CHOICES))
        return RomeEditor(backbone, RomeConfig(covariance=covariance))
    rank = DEFAULT_PATCH_RANK if patch_rank == DEFAULT_RANK else patch_rank
    return Editor.from_pretrained(key, backbone, patch_rank=rank)
