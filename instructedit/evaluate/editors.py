"""Editors an evaluation can use: none (the unedited model), a plain gradient step, ROME, or a
trained checkpoint (MEND multi-task, InstructEdit)."""
from __future__ import annotations

from ..backbone import Backbone
from ..defaults import DEFAULT_STEP_SIZE
from ..editor import Editor

NO_EDIT = "none"
GRADIENT = "gradient"
ROME = "rome"
DEFAULT_GRADIENT_STEP = DEFAULT_STEP_SIZE


def load_eval_editor(spec: str, backbone: Backbone, step_size: float | None = None,
                     patch_rank: int | None | str = "default") -> Editor | None:
    """``none``: no editor (nothing is edited: the floor); ``gradient``: one plain gradient step
    of ``step_size`` on the (instruction-wrapped) edit input; ``rome``: ROME (rank-one
    locate-and-edit, see :mod:`instructedit.rome`); otherwise a checkpoint folder.

    ``patch_rank``: rank each edit is kept at; ``"default"`` means full rank for the gradient step
    and :data:`~instructedit.defaults.DEFAULT_PATCH_RANK` for a checkpoint."""
    key = spec.strip()
    if key.lower() == NO_EDIT:
        return None
    if key.lower() == GRADIENT:
        step = DEFAULT_GRADIENT_STEP if step_size is None else step_size
        if not step > 0:
            raise ValueError(f"--step-size must be positive, got {step}")
        rank = None if patch_rank == "default" else patch_rank
        return Editor.untrained(backbone, step_size=step, normalize=False, patch_rank=rank)
    if key.lower() == ROME:
        from ..rome import RomeEditor

        return RomeEditor(backbone)
    if patch_rank == "default":
        return Editor.from_pretrained(key, backbone)
    return Editor.from_pretrained(key, backbone, patch_rank=patch_rank)


def editor_label(editor: Editor | None) -> str:
    """A short name of the editor for tables and JSON."""
    return "unedited" if editor is None else editor.name
