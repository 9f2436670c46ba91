"""The "Where is this fact?" panel: causal tracing of the prompt as typed, on demand; no Gradio.

Causal tracing (:mod:`instructedit.tracing`, Meng et al. 2022) adds noise to the subject's token
embeddings and puts back one clean state at a time (a block's output, an MLP's output) at one
token and layer; the states that bring the answer back are where the model carries the fact.
The panel traces the **unedited** model (where the model keeps what it was trained with; the
session's edits are not applied) for its own greedy next token, with few noise samples and two
kinds of state so that it takes seconds to a minute on a CPU, and shows the heatmap (layers x
tokens) with the one-line reading of :func:`~instructedit.tracing.summarise`.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..model.backbone import Backbone
from ..tracing import TraceResult, save_heatmap, summarise, trace

PANEL_SAMPLES = 3
"""Noise samples per restored state (the paper uses 10; 3 reads the same bands, 3x faster)."""
PANEL_KINDS = ("hidden", "mlp")
"""Block outputs and MLP outputs (attention is left out: a third of the time, rarely the story)."""
KEEP_IMAGES_S = 60.0
"""A session's heatmaps older than this are removed when it traces again (Gradio has copied them)."""

_PLOT_LOCK = threading.Lock()  # save_heatmap draws with pyplot, whose figure registry is shared


@dataclass(frozen=True)
class TraceView:
    """One trace as the panel shows it: the heatmap file, the reading, and what was traced."""

    image: Path
    reading: str
    prompt: str
    subject: str
    answer: str
    samples: int
    seconds: float
    active_edits: int
    result: TraceResult


def _clear_old_images(folder: Path, now: float) -> None:
    for old in folder.glob("trace-*.png"):
        try:
            if now - old.stat().st_mtime > KEEP_IMAGES_S:
                old.unlink()
        except OSError:
            pass


def run_trace(backbone: Backbone, prompt: str, subject: str, folder: Path, *, active_edits: int = 0,
              samples: int = PANEL_SAMPLES, kinds: tuple[str, ...] = PANEL_KINDS) -> TraceView:
    """Trace ``prompt`` about ``subject`` on the unedited model and draw the heatmap in ``folder``.

    Raises :class:`~instructedit.editing.rome.SubjectError` when the subject covers no token of the prompt.
    """
    start = time.perf_counter()
    result = trace(backbone, prompt, subject, samples=samples, kinds=kinds)
    folder.mkdir(parents=True, exist_ok=True)
    _clear_old_images(folder, time.time())
    image = folder / f"trace-{uuid.uuid4().hex[:12]}.png"
    with _PLOT_LOCK:
        save_heatmap(result, image)
    return TraceView(image, summarise(result), result.prompt, result.subject, result.answer, samples,
                     time.perf_counter() - start, active_edits, result)


def trace_markdown(view: TraceView | None) -> str:
    """The panel's text: the reading, then what was traced and how to read the heatmap."""
    if view is None:
        return ""
    edits = view.active_edits
    model = ("the unedited model" if not edits else
             f"the unedited model (your {edits} active edit{'s are' if edits != 1 else ' is'} not applied)")
    return (f"**Where is this fact?** {view.reading}.  \n"
            f"Traced on {model}: the answer {view.answer!r} after *{view.prompt}*, with the subject "
            f"*{view.subject}* corrupted by noise ({view.samples} samples, {view.seconds:.{0 if view.seconds >= 10 else 1}f} s). Each "
            "cell is the answer's probability when that layer's state at that token is put back "
            "(rows: tokens, `*` marks the subject; columns: layers); dark cells carry the fact.")
