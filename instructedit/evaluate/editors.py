"""Editors an evaluation can use: none (the unedited model), a plain gradient step, ROME, or a
trained checkpoint (MEND multi-task, InstructEdit); ``__all__`` keeps GRADIENT and ROME here."""
from __future__ import annotations

from ..defaults import DEFAULT_STEP_SIZE
from ..editing.editor import Editor
from ..editing.editors import DEFAULT_RANK, GRADIENT, ROME, UNEDITED, load_editor
from ..model.backbone import Backbone

NO_EDIT = "none"
__all__ = ["DEFAULT_GRADIENT_STEP", "GRADIENT", "NO_EDIT", "ROME", "editor_label", "load_eval_editor"]
DEFAULT_GRADIENT_STEP = DEFAULT_STEP_SIZE


def load_eval_editor(spec: str, backbone: Backbone, step_size: float | None = None,
                     patch_rank: int | None | str = DEFAULT_RANK):
    """``none``: no editor (nothing is edited: the floor); ``gradient``: one plain gradient step
    of ``step_size`` on the (instruction-wrapped) edit input; ``rome``: ROME (rank-one
    locate-and-edit, see :mod:`instructedit.editing.rome`); otherwise a checkpoint folder
    (:func:`instructedit.editing.editors.load_editor`, with ``none`` spelled ``unedited`` there)."""
    key = UNEDITED if spec.strip().lower() == NO_EDIT else spec
    return load_editor(key, backbone, step_size=step_size, patch_rank=patch_rank)


def editor_label(editor: Editor | None) -> str:
    """A short name of the editor for tables and JSON."""
    return "unedited" if editor is None else editor.name
