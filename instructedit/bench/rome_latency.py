"""Section 4b: ROME's edit latency beside the one-pass editor's, on the same requests.

ROME optimises a value vector for every edit (dozens of forward/backward passes over a few
prefixed copies of the prompt) and then solves a rank-one update; a trained MEND editor makes one
forward/backward pass and one network call. Both edit the plain CounterFact prompt's subject fact
(InstructEdit reads its instruction-wrapped input); the key covariance ROME needs is estimated
once per model and timed apart.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ..editing.editor import Editor, EditRequest
from ..editing.rome import RomeEditor
from .stats import ratio, summarize

log = logging.getLogger(__name__)


def compare_with_rome(editor: Editor, requests: Sequence[EditRequest]) -> dict:
    """Median edit latency of ``editor`` and of ROME on ``requests`` (those with a subject)."""
    chosen = [r for r in requests if r.subject and r.subject in r.prompt]
    if not chosen:
        return {"records": 0, "note": "no request names a subject that occurs in its prompt"}
    rome = RomeEditor(editor.backbone)
    start = time.perf_counter()
    rome.covariance()
    covariance_s = time.perf_counter() - start
    editor.edit(chosen[0])  # warm both
    rome.edit(chosen[0])
    ours, theirs = [], []
    for request in chosen:
        start = time.perf_counter()
        editor.edit(request)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        rome.edit(request)
        theirs.append(time.perf_counter() - start)
    editor_ms, rome_ms = summarize(ours).scaled(1000), summarize(theirs).scaled(1000)
    return {"records": len(chosen), "editor": editor.name, "editor_ms": editor_ms.to_dict(),
            "rome_ms": rome_ms.to_dict(), "rome_layer": rome.layer,
            "slowdown": round(ratio(rome_ms.median, editor_ms.median), 2),
            "covariance_s": round(covariance_s, 2)}
