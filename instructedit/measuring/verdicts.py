"""The verdict on one probe, read off its two continuations (the studio's and the CLI's), and
the test for a continuation that says an answer (the evaluation's, :mod:`instructedit.evaluate.plain`).

- ``now says <target>``: the continuation after the edit contains the target (as a whole word,
  :func:`contains_answer`) and the one before did not: the evaluation counts exactly these as
  bleed;
- ``same answer``: the continuations are identical, or their first sentences are, or their first
  few words are (punctuation and case aside): the probe's answer did not move;
- ``changed``: anything else.

A probe is *unchanged* when its verdict is ``same answer``, *changed* otherwise.
"""
from __future__ import annotations

import re

from ..model.sentences import SENTENCE_END

CONTINUATION_TASKS = ("counterfact", "recent", "zsre", "custom")
"""Tasks whose target is a short answer a continuation can contain (not ConvSent's responses)."""

SAME_ANSWER = "same answer"
CHANGED = "changed"
NOW_SAYS = "now says"
FIRST_WORDS = 3
_WORD = re.compile(r"\w+")


def contains_answer(text: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``text`` as a whole word (case-insensitive)."""
    answer = answer.strip()
    if not answer:
        return False
    left = r"\b" if answer[0].isalnum() else ""
    right = r"\b" if answer[-1].isalnum() else ""
    return re.search(left + re.escape(answer) + right, text, flags=re.IGNORECASE) is not None


def _normal(text: str) -> str:
    return " ".join(text.split()).lower()


def first_sentence(text: str) -> str:
    """The text up to its first sentence end (normalised; the whole text if none)."""
    text = text.strip()
    end = SENTENCE_END.search(text)
    return _normal(text[: end.start()] if end else text)


def first_words(text: str, n: int = FIRST_WORDS) -> list[str]:
    """The first ``n`` words of ``text``, lower-case, punctuation dropped."""
    return _WORD.findall(text.lower())[:n]


def same_answer(before: str, after: str, words: int = FIRST_WORDS) -> bool:
    """Whether two continuations give the same answer (see the module doc)."""
    if _normal(before) == _normal(after):
        return True
    sentence = first_sentence(before)
    if sentence and sentence == first_sentence(after):
        return True
    a, b = first_words(before, words), first_words(after, words)
    k = min(len(a), len(b))
    return k > 0 and a[:k] == b[:k]


def now_says(target: str) -> str:
    return f"{NOW_SAYS} {target.strip()}"


def verdict(before: str, after: str, target: str | None = None) -> str:
    """``now says <target>``, ``same answer`` or ``changed`` (``target=None``: never the first,
    for targets that are responses rather than short answers)."""
    if target and contains_answer(after, target) and not contains_answer(before, target):
        return now_says(target)
    return SAME_ANSWER if same_answer(before, after) else CHANGED
