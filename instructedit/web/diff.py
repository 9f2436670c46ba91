"""Word-level differences between two continuations, as highlighted spans."""
from __future__ import annotations

import difflib
import re

Spans = list[tuple[str, str | None]]
REMOVED = "removed"
ADDED = "added"
_WORDS = re.compile(r"\s*\S+|\s+")


def _merge(spans: Spans) -> Spans:
    merged: Spans = []
    for text, label in spans:
        if merged and merged[-1][1] == label:
            merged[-1] = (merged[-1][0] + text, label)
        elif text:
            merged.append((text, label))
    return merged


def word_diff(before: str, after: str) -> tuple[Spans, Spans]:
    """Spans of ``before`` (words gone marked ``removed``) and of ``after`` (new words ``added``)."""
    a, b = _WORDS.findall(before or ""), _WORDS.findall(after or "")
    matcher = difflib.SequenceMatcher(a=[w.strip() for w in a], b=[w.strip() for w in b], autojunk=False)
    left: Spans = []
    right: Spans = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        left.extend((w, None if tag == "equal" else REMOVED) for w in a[i1:i2])
        right.extend((w, None if tag == "equal" else ADDED) for w in b[j1:j2])
    return _merge(left), _merge(right)
