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

from ..scoring import AnswerBatch

log = logging.getLogger(__name__)

KEY_ON_ALL = "all"
KEY_ON_SUBJECT = "subject"
KEY_CHOICES = (KEY_ON_ALL, KEY_ON_SUBJECT)


def find_subject(text: str, subject: str) -> int:
    """Character index of the last occurrence of ``subject`` in ``text`` (case-insensitive
    fallback), or -1."""
    at = text.rfind(subject)
    return at if at >= 0 else text.lower().rfind(subject.lower())


def subject_token_span(tokenizer, prompt: str, subject: str | None,
                       char_start: int | None = None) -> tuple[int, int] | None:
    """Token positions ``[start, end)`` of ``subject`` in ``tokenizer(prompt)["input_ids"]`` (its
    last occurrence unless ``char_start`` says where it starts), or None when it is not there."""
    subject = (subject or "").strip()
    if not subject:
        return None
    if char_start is None:
        char_start = find_subject(prompt, subject)
    if char_start < 0:
        return None
    char_end = char_start + len(subject)
    offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    tokens = [i for i, (s, e) in enumerate(offsets) if s < char_end and e > char_start]
    return (tokens[0], tokens[-1] + 1) if tokens else None


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
