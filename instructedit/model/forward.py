"""Forward providers: the whole model, or only its edited top blocks from cached states.

Only the last blocks are edited, so the hidden states entering the first edited block do not
depend on the edit. :class:`CachedTopForward` computes them once per distinct sequence and then
runs just the top blocks and the final norm; logits are computed only at answer positions
(see :mod:`instructedit.scoring`).
"""
from __future__ import annotations

import logging

import torch

from ..scoring import AnswerBatch
from .backbone import Backbone

log = logging.getLogger(__name__)


class FullForward:
    """Final hidden states from the whole model."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def __call__(self, batch: AnswerBatch) -> torch.Tensor:
        out = self.backbone.model.base_model(input_ids=batch.input_ids,
                                             attention_mask=batch.attention_mask)
        return out.last_hidden_state


class CachedTopForward:
    """Final hidden states from cached states entering block ``start``.

    The cache is keyed by token sequence; missing sequences are computed in one batched pass of
    the lower blocks (no gradients). ``max_entries`` bounds memory (oldest dropped first).
    """

    def __init__(self, backbone: Backbone, start: int, dtype: torch.dtype = torch.float32,
                 max_entries: int = 200_000) -> None:
        self.backbone = backbone
        self.start = start
        self.dtype = dtype
        self.max_entries = max_entries
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _keys(batch: AnswerBatch) -> list[tuple[int, ...]]:
        lengths = batch.attention_mask.sum(1).tolist()
        return [tuple(row[:n]) for row, n in zip(batch.input_ids.tolist(), lengths, strict=True)]

    @torch.no_grad()
    def fill(self, batch: AnswerBatch) -> None:
        """Compute and store the lower-block states of rows not yet cached."""
        keys = self._keys(batch)
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if not missing:
            return
        # de-duplicate and right-pad the missing rows only
        unique: dict[tuple[int, ...], int] = {}
        for i in missing:
            unique.setdefault(keys[i], i)
        rows = list(unique.values())
        width = max(len(keys[i]) for i in rows)
        ids = batch.input_ids[rows, :width]
        hidden = self.backbone.adapter.hidden_before_layer(self.backbone.model, ids, self.start)
        for j, i in enumerate(rows):
            self.cache[keys[i]] = hidden[j, : len(keys[i])].to(self.dtype).clone()
        while len(self.cache) > self.max_entries:
            self.cache.pop(next(iter(self.cache)))

    def states(self, batch: AnswerBatch) -> torch.Tensor:
        """Cached states entering block ``start`` for every row, right-padded."""
        self.fill(batch)
        keys = self._keys(batch)
        first = self.cache[keys[0]]
        out = first.new_zeros((batch.size, batch.input_ids.shape[1], first.shape[-1]))
        for i, key in enumerate(keys):
            out[i, : len(key)] = self.cache[key]
        return out

    def __call__(self, batch: AnswerBatch) -> torch.Tensor:
        hidden = self.states(batch).to(next(self.backbone.model.parameters()).dtype
                                       if self.backbone.config.quant == "none" else self.dtype)
        return self.backbone.adapter.run_from_layer(self.backbone.model, hidden, self.start)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.cache.values())
