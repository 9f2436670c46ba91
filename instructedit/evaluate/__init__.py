"""Evaluation: reliability, generalization, locality, portability (and ConvSent extras) of edits,
the plain protocol (what a user sees), the ``results`` report (``docs/results.md``) and the
analysis of an editor's transformed gradients (:mod:`.analysis`); the commands ``eval``,
``results`` and ``analyze`` are in :mod:`instructedit.cli`.

Names are imported on first use (module ``__getattr__``), so ``python -m instructedit --help``,
which imports the torch-free :mod:`.config` (the results settings) and :mod:`.inputs`, does not
load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "GRADIENT": "editors", "NO_EDIT": "editors", "editor_label": "editors",
    "load_eval_editor": "editors",
    "SEEN": "inputs", "RenderedRecord": "inputs", "parse_instruction": "inputs", "render": "inputs",
    "EvalSummary": "metrics", "RecordResult": "metrics", "mean_or_none": "metrics",
    "ngram_entropy": "metrics", "summarize": "metrics",
    "EvalConfig": "runner", "EvalResult": "runner", "Evaluator": "runner", "evaluate": "runner",
    "SelectionError": "selection", "limit_records": "selection", "load_eval_records": "selection",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
