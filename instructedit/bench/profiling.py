"""The top operators of a callable under torch.profiler (run where a goal is missed)."""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

log = logging.getLogger(__name__)


def top_ops(fn: Callable[[], object], top: int = 8) -> dict:
    """Run ``fn`` once under the profiler; the ``top`` operators by self CPU time.

    Returns ``{"total_ms", "ops": [{"op", "self_ms", "share", "calls"}]}`` where ``share`` is the
    op's self time over the sum of all self times.
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 3),
            "share": round(e.self_cpu_time_total / total_us, 4), "calls": int(e.count)}
           for e in events[:top]]
    log.debug("profile: %s", ops)
    return {"total_ms": round(total_us / 1000, 3), "ops": ops}


def no_grad_profile(fn: Callable[[], object], top: int = 8) -> dict:
    with torch.no_grad():
        return top_ops(fn, top)
