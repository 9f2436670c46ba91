"""Greedy generation, used by everything that shows text (app, CLI, evaluation).

Decoding runs through :func:`.decoding.greedy_new_tokens` (a lean loop over the model's KV cache
that returns ``model.generate``'s greedy tokens; ``GenerationConfig(lean=False)`` calls
``generate`` itself). ``GenerationConfig(first_sentence=True)`` stops each row at the end of its
first sentence (:mod:`.sentences`, the rule the studio's verdicts read sentences by) and drops
stopped rows from the batch, for views that show only that sentence.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .backbone import Backbone
from .decoding import RowDone, greedy_new_tokens
from .sentences import first_sentence_of, sentence_ended


@dataclass(frozen=True)
class GenerationConfig:
    """Greedy decoding settings.

    Attributes:
        max_new_tokens: tokens generated after the prompt.
        chat: wrap the prompt in the tokenizer's chat template (when it has one).
        lean: decode with :mod:`.decoding`'s lean loop (the same greedy tokens as
            ``model.generate``, faster); False runs ``model.generate`` itself.
        first_sentence: each continuation is cut after its first sentence (module doc), and a
            row stops decoding there (at most ``max_new_tokens`` tokens all the same); a tuple
            of one flag per prompt says it row by row.
    """

    max_new_tokens: int = 20
    chat: bool = False
    lean: bool = True
    first_sentence: bool | tuple[bool, ...] = False

    def sentence_rows(self, rows: int) -> tuple[bool, ...]:
        """Per prompt of a call of ``rows`` prompts: whether it stops at its first sentence."""
        if isinstance(self.first_sentence, tuple):
            if len(self.first_sentence) != rows:
                raise ValueError(f"{len(self.first_sentence)} first-sentence flags for {rows} prompts")
            return self.first_sentence
        return (bool(self.first_sentence),) * rows


def format_prompt(backbone: Backbone, prompt: str, chat: bool) -> str:
    """The prompt as fed to the model (chat template applied when asked and available)."""
    tokenizer = backbone.tokenizer
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def _left_padded(tokenizer, texts: Sequence[str], add_special_tokens: bool,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` left-padded without touching the shared tokenizer's padding settings.

    (Setting ``tokenizer.padding_side`` or batch padding mutates state shared by all threads,
    so concurrent callers could get each other's padding.)
    """
    rows = [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def _greedy_new_tokens(backbone: Backbone, enc: dict[str, torch.Tensor], max_new_tokens: int,
                       lean: bool = True, row_done: RowDone | None = None) -> torch.Tensor:
    return greedy_new_tokens(backbone.model, enc["input_ids"], enc["attention_mask"], max_new_tokens,
                             backbone.tokenizer.pad_token_id, lean=lean,
                             packed_4bit=backbone.config.fast_4bit, row_done=row_done)


@torch.no_grad()
def generate_ids(backbone: Backbone, prompts: Sequence[str], max_new_tokens: int, *,
                 lean: bool = True) -> list[list[int]]:
    """Greedy continuations of plain ``prompts`` as token ids, each cut after its first end token
    (``lean``: as in :class:`GenerationConfig`)."""
    enc = _left_padded(backbone.tokenizer, list(prompts), True, backbone.device)
    eos = backbone.tokenizer.eos_token_id
    rows = []
    for row in _greedy_new_tokens(backbone, enc, max_new_tokens, lean).tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        rows.append(row)
    return rows


@torch.no_grad()
def generate(backbone: Backbone, prompts: Sequence[str] | str, config: GenerationConfig | None = None,
             ) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new text), under the active patches."""
    config = config or GenerationConfig()
    if isinstance(prompts, str):
        prompts = [prompts]
    texts = [format_prompt(backbone, p, config.chat) for p in prompts]
    enc = _left_padded(backbone.tokenizer, texts, not config.chat, backbone.device)
    cut = config.sentence_rows(len(texts))
    row_done = sentence_ended(backbone.tokenizer, cut) if any(cut) else None
    new_tokens = _greedy_new_tokens(backbone, enc, config.max_new_tokens, config.lean, row_done)
    texts = [backbone.tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]
    return [first_sentence_of(t) if c else t for t, c in zip(texts, cut, strict=True)]
