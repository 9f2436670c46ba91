"""Evaluation: reliability, generalization, locality, portability (and ConvSent extras) of edits,
the ``eval`` command, and the ``results`` report (``docs/results.md``)."""
from __future__ import annotations

from .editors import GRADIENT, NO_EDIT, editor_label, load_eval_editor
from .inputs import SEEN, RenderedRecord, parse_instruction, render
from .metrics import EvalSummary, RecordResult, mean_or_none, ngram_entropy, summarize
from .runner import EvalConfig, EvalResult, Evaluator, evaluate
from .selection import SelectionError, limit_records, load_eval_records

__all__ = [
    "GRADIENT", "NO_EDIT", "SEEN", "EvalConfig", "EvalResult", "EvalSummary", "Evaluator",
    "RecordResult", "RenderedRecord", "SelectionError", "editor_label", "evaluate",
    "limit_records", "load_eval_editor", "load_eval_records", "mean_or_none", "ngram_entropy",
    "parse_instruction", "render", "summarize",
]
