"""Section 2: greedy generation speed with 0, 1, 10 and 50 active edits.

Each timed run generates exactly ``new_tokens`` tokens (end-of-sequence suppressed) from one
prompt at batch size 1, under the active patches. Counts are interleaved within each repeat.
Also measured: the same edits combined into one patch per module (see :mod:`.combine`), and
combined after truncating each edit to rank 1 (see :func:`.memory.truncate_patch`): an edit has
~30 factor rows per matrix, so 50 combined edits are a rank-1,500 update, wider than the model.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from ..backbone import Backbone
from ..editor import Edit
from ..patches import Patch, PatchEngine
from .combine import combine_patches
from .memory import truncate_patch
from .profiling import top_ops
from .stats import summarize

log = logging.getLogger(__name__)


@torch.no_grad()
def generate_exact(backbone: Backbone, prompt: str, new_tokens: int) -> int:
    """Greedy-generate exactly ``new_tokens`` tokens after ``prompt``; returns the count."""
    tokenizer = backbone.tokenizer
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=backbone.device)
    out = backbone.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                                  temperature=None, top_p=None, top_k=None)
    return int(out.shape[1] - ids.shape[1])


def _timed_generation(backbone: Backbone, prompt: str, new_tokens: int,
                      patches: Sequence[Patch]) -> float:
    with PatchEngine.activate(list(patches)):
        start = time.perf_counter()
        produced = generate_exact(backbone, prompt, new_tokens)
        seconds = time.perf_counter() - start
    if produced != new_tokens:
        raise RuntimeError(f"generated {produced} tokens instead of {new_tokens}")
    return seconds


def goal_count(counts: Sequence[int], wanted: int = 10) -> int:
    """The count the overhead goal is judged at: ``wanted`` or the largest count below it."""
    below = [c for c in counts if 0 < c <= wanted]
    return max(below) if below else max(counts)


def measure_generation(backbone: Backbone, edits: Sequence[Edit], counts: Sequence[int],
                       new_tokens: int, repeats: int, prompt: str, goal: float = 0.05,
                       profile_top: int = 8) -> dict:
    """Tokens/s per active-edit count, as-is and with combined patches; overheads vs 0 edits."""
    counts = sorted(set(counts))
    if max(counts) > len(edits):
        raise ValueError(f"need {max(counts)} edits, got {len(edits)}")
    dtype = next(backbone.model.parameters()).dtype
    compute = dtype if dtype != torch.float32 else None  # cast once, not in every hook call
    rank1 = [truncate_patch(e.patch, 1) for e in edits[: max(counts)]]
    variants = {"as_is": {c: [e.patch for e in edits[:c]] for c in counts},
                "combined": {c: [combine_patches([e.patch for e in edits[:c]], compute)] if c else []
                             for c in counts},
                "combined_rank1": {c: [combine_patches(rank1[:c], compute)] if c else [] for c in counts}}
    seconds: dict[str, dict[int, list[float]]] = {v: {c: [] for c in counts} for v in variants}
    for c in counts:  # warm-up: first runs pay for allocations
        _timed_generation(backbone, prompt, new_tokens, variants["as_is"][c])
    for _ in range(repeats):
        for c in counts:
            for name, patches in variants.items():
                if name != "as_is" and c == 0:
                    continue
                seconds[name][c].append(_timed_generation(backbone, prompt, new_tokens, patches[c]))
    for name in variants:
        seconds[name][0] = seconds["as_is"][0]
    result: dict = {"new_tokens": new_tokens, "repeats": repeats, "goal": goal}
    for name in variants:
        tps = {str(c): summarize(seconds[name][c]).inverse(new_tokens).to_dict() for c in counts}
        base = summarize(seconds[name][0]).median
        overhead = {str(c): round(summarize(seconds[name][c]).median / base - 1, 4)
                    for c in counts if c}
        result[name] = {"tokens_per_s": tps, "overhead": overhead}
    at = goal_count(counts)
    result["goal_count"] = at
    result["met"] = result["as_is"]["overhead"][str(at)] <= goal
    result["combined_met"] = result["combined"]["overhead"][str(at)] <= goal
    if not result["met"]:
        log.info("generation overhead at %d edits above %.0f%%: profiling", at, goal * 100)
        result["profile"] = {
            "as_is": top_ops(lambda: _timed_generation(backbone, prompt, new_tokens,
                                                       variants["as_is"][at]), profile_top),
            "no_edits": top_ops(lambda: _timed_generation(backbone, prompt, new_tokens, []),
                                profile_top)}
    return result
