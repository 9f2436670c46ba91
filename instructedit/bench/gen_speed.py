"""Section 2: greedy generation speed with 0, 1, 10 and 50 active edits.

Each timed run generates exactly ``new_tokens`` tokens (end-of-sequence suppressed) from one
prompt at batch size 1, under the active patches. Counts are interleaved within each repeat.
Measured for the edits as the editor stores them (rank-truncated, see
:data:`~instructedit.defaults.DEFAULT_PATCH_RANK`) and at full rank: a full-rank edit has ~30
factor rows per matrix, so 50 of them are a rank-1,500 update, wider than the model.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import torch

from ..editing.patches import Patch, PatchEngine
from ..model.backbone import Backbone
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


def measure_generation(backbone: Backbone, variants: Mapping[str, Sequence[Patch]],
                       counts: Sequence[int], new_tokens: int, repeats: int, prompt: str,
                       goal: float = 0.05, profile_top: int = 8) -> dict:
    """Tokens/s per active-edit count for each variant of the same edits; overheads vs 0 edits.

    ``variants`` maps a name to the edits' patches in that form (the first is the form the app
    uses, which the goal is judged on). Patches go through :meth:`PatchEngine.activate` exactly as
    in the app, which folds the active edits into one factor pair per module.
    """
    counts = sorted(set(counts))
    names = list(variants)
    for name, patches in variants.items():
        if max(counts) > len(patches):
            raise ValueError(f"need {max(counts)} edits, got {len(patches)} ({name})")
    stored = names[0]
    sets = {name: {c: list(variants[name][:c]) for c in counts} for name in names}
    seconds: dict[str, dict[int, list[float]]] = {v: {c: [] for c in counts} for v in names}
    for c in counts:  # warm-up: first runs pay for allocations
        _timed_generation(backbone, prompt, new_tokens, sets[stored][c])
    for _ in range(repeats):
        for c in counts:
            for name in names:
                if name != stored and c == 0:
                    continue
                seconds[name][c].append(_timed_generation(backbone, prompt, new_tokens, sets[name][c]))
    for name in names:
        seconds[name][0] = seconds[stored][0]
    result: dict = {"new_tokens": new_tokens, "repeats": repeats, "goal": goal, "variants": names}
    for name in names:
        tps = {str(c): summarize(seconds[name][c]).inverse(new_tokens).to_dict() for c in counts}
        base = summarize(seconds[name][0]).median
        overhead = {str(c): round(summarize(seconds[name][c]).median / base - 1, 4)
                    for c in counts if c}
        rows = {str(c): _rows(sets[name][c]) for c in counts}
        result[name] = {"tokens_per_s": tps, "overhead": overhead, "factor_rows": rows}
    at = goal_count(counts)
    result["goal_count"] = at
    result["met"] = result[stored]["overhead"][str(at)] <= goal
    if not result["met"]:
        log.info("generation overhead at %d edits above %.0f%%: profiling", at, goal * 100)
        result["profile"] = {
            "with_edits": top_ops(lambda: _timed_generation(backbone, prompt, new_tokens,
                                                            sets[stored][at]), profile_top),
            "no_edits": top_ops(lambda: _timed_generation(backbone, prompt, new_tokens, []),
                                profile_top)}
    return result


def _rows(patches: Sequence[Patch]) -> int:
    """Factor rows per module once ``patches`` are combined (the width of the hook's matmuls)."""
    if not patches:
        return 0
    return max(sum(p.layers[n].u.shape[0] for p in patches if n in p.layers)
               for n in patches[0].layers)
