"""Short contexts a subject can appear after ("My friend told me. The Eiffel Tower is ..."): ROME
averages its key over them, and re-keying (:mod:`.rekey`) keeps an update answering its subject
in them. The prefixes are the unedited model's own greedy continuations of seed phrases, made once
per model and cached."""
from __future__ import annotations

import threading
import weakref

from ..model.backbone import Backbone
from ..model.generation import GenerationConfig, generate
from .patches import PatchEngine

__all__ = ["PREFIX_SEEDS", "context_prefixes", "prefixed"]

PREFIX_SEEDS = ("The weather today", "In the morning,", "My friend told me", "After the game,",
                "According to the report,", "Once upon a time,", "Last year,", "The new law",
                "Because of this,", "I think that")
"""Seed phrases of the context prefixes."""

_PREFIX_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _clean_prefix(text: str) -> str:
    text = " ".join(text.split())
    return text.rstrip(" .")


def context_prefixes(backbone: Backbone, n: int, n_tokens: int) -> tuple[str, ...]:
    """``n`` short prefixes: the unedited model's greedy continuations of seed phrases (cached)."""
    if n <= 0:
        return ()
    key = (n, n_tokens)
    with _CACHE_LOCK:
        cached = _PREFIX_CACHE.get(backbone.model, {}).get(key)
    if cached is not None:
        return cached
    seeds = [PREFIX_SEEDS[i % len(PREFIX_SEEDS)] for i in range(n)]
    with PatchEngine.activate(None):
        texts = generate(backbone, seeds, GenerationConfig(max_new_tokens=n_tokens))
    prefixes = tuple(_clean_prefix(seed + text) or seed for seed, text in zip(seeds, texts, strict=True))
    with _CACHE_LOCK:
        _PREFIX_CACHE.setdefault(backbone.model, {})[key] = prefixes
    return prefixes



def prefixed(prompt: str, prefix: str) -> str:
    """``prompt`` after the context ``prefix`` (``"{prefix}. {prompt}"``)."""
    return f"{_clean_prefix(prefix)}. {prompt}"
