"""Greedy generation, used by everything that shows text (app, CLI, evaluation)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .backbone import Backbone


@dataclass(frozen=True)
class GenerationConfig:
    """Greedy decoding settings.

    Attributes:
        max_new_tokens: tokens generated after the prompt.
        chat: wrap the prompt in the tokenizer's chat template (when it has one).
    """

    max_new_tokens: int = 20
    chat: bool = False


def format_prompt(backbone: Backbone, prompt: str, chat: bool) -> str:
    """The prompt as fed to the model (chat template applied when asked and available)."""
    tokenizer = backbone.tokenizer
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


@torch.no_grad()
def generate(backbone: Backbone, prompts: Sequence[str] | str, config: GenerationConfig | None = None,
             ) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new text), under the active patches."""
    config = config or GenerationConfig()
    if isinstance(prompts, str):
        prompts = [prompts]
    tokenizer = backbone.tokenizer
    texts = [format_prompt(backbone, p, config.chat) for p in prompts]
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True,
                        add_special_tokens=not config.chat).to(backbone.device)
    finally:
        tokenizer.padding_side = "right"
    out = backbone.model.generate(**enc, max_new_tokens=config.max_new_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, num_beams=1,
                                  temperature=None, top_p=None, top_k=None)
    new_tokens = out[:, enc["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]
