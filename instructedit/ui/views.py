"""Plain values the page shows (tables, one-line summaries), built from service results.

No Gradio here: every function returns strings, lists or pandas frames, so the formatting is
tested without a browser.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..instructions import HELD_OUT_INDEX, get_task
from .history import HistoryEntry
from .measure import EditReport, EditScores

REPHRASE_HEADERS = ["rephrase", "p(target) before → after", "target tokens right", "continuation after"]
PROBE_HEADERS = ["locality probe", "before", "after", "unchanged?"]
HISTORY_HEADERS = ["#", "id", "task", "instruction", "prompt", "target", "when (UTC)",
                   "InstructEdit rel / gen / loc", "baseline rel / gen / loc"]
REPHRASE_WIDTHS = ["34%", "22%", "14%", "30%"]
PROBE_WIDTHS = ["28%", "28%", "28%", "16%"]
HISTORY_WIDTHS = ["4%", "11%", "10%", "9%", "24%", "12%", "12%", "9%", "9%"]


def pct(value: float | None) -> str:
    """A share as a percentage, or a dash when it was not measured."""
    return "–" if value is None else f"{value:.0%}"


def prob(value: float) -> str:
    """A probability readable at any scale (0.0012% reads badly; 1.2e-05 does not)."""
    return f"{value:.1%}" if value >= 0.001 else f"{value:.1e}"


def scores_triple(scores: EditScores | None) -> str:
    """``rel / gen / loc`` as percentages."""
    if scores is None:
        return "–"
    return " / ".join(pct(v) for v in (scores.reliability, scores.generalization, scores.locality))


def report_summary(report: EditReport | None, error: str | None = None) -> str:
    """Markdown: the three scores, the target's probability before -> after, and the time taken."""
    if report is None:
        return f"⚠ {error}" if error else ""
    s = report.scores
    return (f"**Reliability {pct(s.reliability)}** · **Generalization {pct(s.generalization)}** · "
            f"**Locality {pct(s.locality)}**  \n"
            f"p(target) on the edit input: {prob(report.prob_before)} → **{prob(report.prob_after)}** · "
            f"edit {report.edit_ms / 1000:.2f} s, measuring {report.measure_ms / 1000:.1f} s")


def rephrase_table(report: EditReport | None) -> pd.DataFrame:
    rows = [] if report is None else [
        [r.prompt, f"{prob(r.prob_before)} → {prob(r.prob_after)}", pct(r.accuracy), r.after.strip()]
        for r in report.rephrases]
    return pd.DataFrame(rows, columns=REPHRASE_HEADERS)


def probe_table(report: EditReport | None) -> pd.DataFrame:
    rows = []
    for p in report.probes if report is not None else ():
        same = "yes" if p.unchanged else "no"
        rows.append([p.prompt, p.before.strip(), p.after.strip(), f"{same} · {pct(p.agreement)}"])
    return pd.DataFrame(rows, columns=PROBE_HEADERS)


def instruction_label(task: str, instruction: int | str | None) -> str:
    """Short name of an instruction choice (``#3``, ``held out``, ``none``, or the custom text)."""
    if instruction is None:
        return "none"
    if isinstance(instruction, int):
        return "held out" if instruction == HELD_OUT_INDEX and get_task(task).instructions else f"#{instruction + 1}"
    if instruction == "heldout":
        return "held out"
    return f"custom: {instruction[:40]}"


def history_table(entries: Sequence[HistoryEntry]) -> pd.DataFrame:
    rows = []
    for n, e in enumerate(entries, 1):
        r = e.request
        rows.append([n, e.id, get_task(r.task).display_name, instruction_label(r.task, r.instruction),
                     r.prompt, r.target, e.edit.created_at.replace("T", " ")[:19],
                     scores_triple(e.scores), scores_triple(e.baseline_scores)])
    return pd.DataFrame(rows, columns=HISTORY_HEADERS)


def history_summary(entries: Sequence[HistoryEntry], cap: int) -> str:
    n = len(entries)
    if n == 0:
        return "**No active edits.** The model answers as it was trained."
    return (f"**{n} active edit{'s' if n != 1 else ''}** (at most {cap} per session). Edits stack: "
            "each new edit is computed on top of the ones before it, and only you see them.")


def history_choices(entries: Sequence[HistoryEntry]) -> list[tuple[str, str]]:
    """(label, id) pairs for the remove picker."""
    return [(f"#{n} {e.id}: {e.request.prompt[:40]} → {e.request.target[:20]}", e.id)
            for n, e in enumerate(entries, 1)]
