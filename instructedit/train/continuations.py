"""The unedited model's own continuation after "typed prompt + target", per training example.

The continuation KL (``TrainConfig.continuation_kl_tokens``) holds these tokens' predictions still
under the edit, so an edit that makes the model say the target does not also make it loop on it
("Rome Rome Rome ..."); optionally the same after each same-template neighbour's "prompt + true
answer", so the edit does not break the neighbours' sentences either. Each distinct prefix is generated once (greedy, no patch active) and kept.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..model.backbone import Backbone
from ..model.generation import generate_ids
from .examples import TrainingExample


class ContinuationCache:
    """Greedy continuations of the examples' prefixes, generated once per distinct prefix."""

    def __init__(self, backbone: Backbone, max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise ValueError("the continuation needs at least one token")
        self.backbone = backbone
        self.max_new_tokens = max_new_tokens
        self._ids: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def fill(self, examples: Sequence[TrainingExample], *, neighbours: bool = False,
             chunk: int = 16) -> list[TrainingExample]:
        """``examples`` with their ``continuation`` set (and, with ``neighbours``, their
        ``neighbour_continuation``): one batched generate per ``chunk`` new prefixes."""
        prefixes = [e.continuation_prefix for e in examples]
        if neighbours:
            prefixes += [e.neighbour_prefix for e in examples]
        self.prefill(prefixes, chunk)
        return [dataclasses.replace(
            e, continuation=self._ids[e.continuation_prefix],
            neighbour_continuation=self._ids[e.neighbour_prefix] if neighbours else ())
            for e in examples]

    def prefill(self, prefixes: Sequence[str], chunk: int = 16) -> int:
        """Generate the continuations of the ``prefixes`` not yet known, one batched generate per
        ``chunk`` of them, similar lengths together (little padding); returns how many were new."""
        missing = sorted(set(prefixes) - self._ids.keys(), key=lambda p: (len(p), p))
        for i in range(0, len(missing), chunk):
            part = missing[i: i + chunk]
            for prefix, ids in zip(part, generate_ids(self.backbone, part, self.max_new_tokens),
                                   strict=True):
                self._ids[prefix] = tuple(ids) or (self.backbone.tokenizer.eos_token_id or 0,)
        return len(missing)
