"""Where a continuation's first sentence ends: the one rule the studio's verdicts read sentences
by and generation stops at (``GenerationConfig(first_sentence=True)``). Free of torch."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["SENTENCE_END", "first_sentence_of", "sentence_ended"]

SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
"""Where a sentence ends in a continuation: ``.``, ``!`` or ``?`` before a space or the end, or a
line break (looked for after the continuation's leading white space)."""

_ENDED_WHILE_DECODING = re.compile(r"[.!?](?=\s)|\n")
"""The same while decoding: a full stop counts once the next token starts with a space (so
"3.5" or "U.S." do not end the sentence at their first dot)."""


def _body(text: str) -> int:
    return len(text) - len(text.lstrip())


def first_sentence_of(text: str) -> str:
    """``text`` up to the end of its first sentence (its end mark kept, a line break dropped;
    the whole text when no sentence ends in it)."""
    end = SENTENCE_END.search(text, _body(text))
    if end is None:
        return text
    return text[: end.start()] if end.group() == "\n" else text[: end.end()]


def sentence_ended(tokenizer, rows: Sequence[bool] | None = None) -> Callable[[int, list[int]], bool]:
    """A decoder stop test (``row_done`` of :func:`~instructedit.model.decoding.greedy_new_tokens`):
    the row's new text has ended its first sentence (only rows flagged in ``rows``, when given)."""
    def done(row: int, new_tokens: list[int]) -> bool:
        if rows is not None and not rows[row]:
            return False
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        return _ENDED_WHILE_DECODING.search(text, _body(text)) is not None

    return done
