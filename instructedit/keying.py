"""Where an edit's update is keyed: every token of the edit input, or only the subject's tokens.

MEND's update is ``sum_t d~_t u~_t^T`` over the tokens ``t`` of the edit input. Tokens of the
sentence frame ("The official language of ... is") are shared with every other subject in the
same frame, so an update keyed on them fires for those subjects too. Keyed on the subject's
tokens only (as ROME keys its update on the subject's last token), it fires where the subject is.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .scoring import AnswerBatch

log = logging.getLogger(__name__)

KEY_ON_ALL = "all"
KEY_ON_SUBJECT = "subject"
KEY_CHOICES = (KEY_ON_ALL, KEY_ON_SUBJECT)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def subject_token_span(tokenizer, prompt: str, subject: str | None) -> tuple[int, int] | None:
    """Token positions ``[start, end)`` of the last occurrence of ``subject`` in ``prompt``
    (tokenized as :func:`~instructedit.scoring.tokenize_answers` tokenizes prompts), or None."""
    subject = (subject or "").strip()
    if not subject:
        return None
    at = prompt.rfind(subject)
    if at < 0:
        return None
    full = tokenizer(prompt)["input_ids"]
    # A prefix tokenizes like the start of the whole text up to a word boundary; the common prefix
    # guards against a merge across the boundary.
    start = _common_prefix(tokenizer(prompt[:at])["input_ids"], full) if at else 0
    before_end = tokenizer(prompt[: at + len(subject)])["input_ids"]
    end = max(_common_prefix(before_end, full), start + 1)
    return start, min(end, len(full))


def key_mask(tokenizer, batch: AnswerBatch, prompts: Sequence[str],
             subjects: Sequence[str | None]) -> torch.Tensor:
    """(B, T) bool: the positions whose (u, d) build each row's update.

    Rows with a subject found in their prompt are keyed on the subject's tokens; the others on
    every real token (the classic MEND update).
    """
    mask = batch.attention_mask.bool().clone()
    for row, (prompt, subject) in enumerate(zip(prompts, subjects, strict=True)):
        span = subject_token_span(tokenizer, prompt, subject)
        if span is None:
            if subject:
                log.debug("subject %r not found in the edit input; keying on every token", subject)
            continue
        keep = torch.zeros_like(mask[row])
        keep[span[0]: span[1]] = True
        mask[row] &= keep
    return mask
