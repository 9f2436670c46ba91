"""Editors an evaluation can use: none (the unedited model), a plain gradient step, a checkpoint."""
from __future__ import annotations

from ..backbone import Backbone
from ..editor import Editor

NO_EDIT = "none"
GRADIENT = "gradient"
DEFAULT_GRADIENT_STEP = 0.03


def load_eval_editor(spec: str, backbone: Backbone, step_size: float | None = None) -> Editor | None:
    """``none``: no editor (nothing is edited: the floor); ``gradient``: one plain gradient step
    of ``step_size`` on the (instruction-wrapped) edit input; otherwise a checkpoint folder."""
    key = spec.strip()
    if key.lower() == NO_EDIT:
        return None
    if key.lower() == GRADIENT:
        step = DEFAULT_GRADIENT_STEP if step_size is None else step_size
        if not step > 0:
            raise ValueError(f"--step-size must be positive, got {step}")
        return Editor.untrained(backbone, step_size=step, normalize=False)
    return Editor.from_pretrained(key, backbone)


def editor_label(editor: Editor | None) -> str:
    """A short name of the editor for tables and JSON."""
    return "unedited" if editor is None else editor.name
