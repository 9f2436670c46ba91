"""InstructEdit Studio: instruction-based knowledge editing of language models.

The library API, importable from the package top::

    from instructedit import load_backbone, Editor, EditRequest, PatchEngine, generate

The names are imported on first use (module ``__getattr__``), so ``import instructedit`` and
``python -m instructedit --help`` stay free of torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    "load_backbone": "model.backbone",
    "Backbone": "model.backbone",
    "Editor": "editing.editor",
    "EditRequest": "editing.editor",
    "Edit": "editing.editor",
    "PatchEngine": "editing.patches",
    "Patch": "editing.patches",
    "generate": "model.generation",
    "GenerationConfig": "model.generation",
}

__all__ = ["Backbone", "Edit", "EditRequest", "Editor", "GenerationConfig", "Patch", "PatchEngine",
           "__version__", "generate", "load_backbone"]

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .editing.editor import Edit, Editor, EditRequest
    from .editing.patches import Patch, PatchEngine
    from .model.backbone import Backbone, load_backbone
    from .model.generation import GenerationConfig, generate


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
