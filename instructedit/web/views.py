"""Plain values the page shows (tables, one-line summaries), built from service results.

No Gradio here: every function returns strings, lists or pandas frames, so the formatting is
tested without a browser. What a user sees comes first (the prompt as typed, verdicts read off
the text); the paper protocol's numbers (instruction-wrapped inputs) are labelled as such.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..instructions import HELD_OUT_INDEX, get_task
from ..measuring.probing import ProbeResult
from ..measuring.single import EditReport, EditScores
from ..measuring.verdicts import NOW_SAYS, SAME_ANSWER
from .blast import FACT, NEIGHBOUR, UNRELATED, BlastRadius
from .comparison import BASELINE, SLOT_INFO
from .history import HistoryEntry

PAPER_PROTOCOL = "paper protocol (instruction-wrapped inputs)"
REPHRASE_HEADERS = ["rephrase", "before", "after", "verdict", "teacher-forced"]
PROBE_HEADERS = ["locality probe", "before", "after", "verdict", "teacher-forced"]
BLAST_HEADERS = ["probe", "what it probes", "before", "after", "verdict", "teacher-forced"]
WRAPPED_HEADERS = ["rephrase as the editor read it", "p(target) before → after", "target tokens right",
                   "continuation after"]
SCORES_HEADER = "says it · plain rel. · paper rel / gen / loc"
HISTORY_HEADERS = ["#", "id", "task", "instruction", "prompt", "target", "when (UTC)",
                   f"InstructEdit: {SCORES_HEADER}", "blast radius (InstructEdit)", f"baseline: {SCORES_HEADER}"]
"""The history's columns with the baseline shown (:func:`history_headers` for other comparisons)."""
REPHRASE_WIDTHS = ["22%", "22%", "22%", "14%", "20%"]
PROBE_WIDTHS = REPHRASE_WIDTHS
BLAST_WIDTHS = ["20%", "10%", "20%", "20%", "12%", "18%"]
WRAPPED_WIDTHS = ["34%", "22%", "14%", "30%"]
HISTORY_WIDTHS = ["3%", "9%", "8%", "7%", "18%", "9%", "10%", "13%", "12%", "11%"]
_WIDTHS_BY_COMPARISONS = {0: ["3%", "10%", "9%", "8%", "23%", "10%", "11%", "14%", "12%"], 1: HISTORY_WIDTHS,
                          2: ["3%", "8%", "7%", "6%", "15%", "8%", "9%", "12%", "11%", "10%", "11%"]}
GROUP_NAMES = {NEIGHBOUR: "other subject, same sentence", FACT: "same subject, other fact",
               UNRELATED: "unrelated fact"}


def pct(value: float | None) -> str:
    """A share as a percentage, or a dash when it was not measured."""
    return "–" if value is None else f"{value:.0%}"


def prob(value: float) -> str:
    """A probability readable at any scale (0.0012% reads badly; 1.2e-05 does not)."""
    return f"{value:.1%}" if value >= 0.001 else f"{value:.1e}"


def p2(value: float | None) -> str:
    """A probability with two decimals (the tables' teacher-forced figures)."""
    return "–" if value is None else f"{value:.2f}"


def says(value: float | None) -> str:
    """Generation success as yes / no (a dash where it does not apply)."""
    return "–" if value is None else ("yes" if value >= 0.5 else "no")


def scores_triple(scores: EditScores | None) -> str:
    """``rel / gen / loc`` of the paper protocol as percentages."""
    if scores is None:
        return "–"
    return " / ".join(pct(v) for v in (scores.reliability, scores.generalization, scores.locality))


def scores_cell(scores: EditScores | None) -> str:
    """A history cell: says the target? · plain reliability · paper rel / gen / loc."""
    if scores is None:
        return "–"
    return f"{says(scores.generation_success)} · {pct(scores.plain_reliability)} · {scores_triple(scores)}"


def teacher_forced(row: ProbeResult, target: str) -> str:
    """What the teacher-forced figures are: ``p(Paris) 0.61 → 0.02 · p(Rome) 0.00 → 0.85``."""
    parts = []
    answer = (row.answer or "").strip()
    if answer and row.p_answer_before is not None and answer.lower() != target.strip().lower():
        parts.append(f"p({answer}) {p2(row.p_answer_before)} → {p2(row.p_answer_after)}")
    parts.append(f"p({target}) {p2(row.p_target_before)} → {p2(row.p_target_after)}")
    return " · ".join(parts)


def verdict_count(rows: Sequence[ProbeResult], what: str, target: str) -> str:
    """``2 of 3 rephrases now say Rome`` / ``1 of 2 locality probes changed``."""
    if not rows:
        return ""
    now = sum(r.verdict.startswith(NOW_SAYS) for r in rows)
    changed = sum(not r.unchanged for r in rows)
    if what == "rephrases":
        return f"{now} of {len(rows)} {what} now say {target}"
    return f"{len(rows) - changed} of {len(rows)} {what} kept their answer"


def report_summary(report: EditReport | None, error: str | None = None) -> str:
    """Markdown: what a user sees (says the target?, plain reliability, p(target), verdicts)."""
    if report is None:
        return f"⚠ {error}" if error else ""
    s, target = report.scores, report.target
    if s.generation_success is None:
        said = "**Says the target: –** (the target is a response, not a short answer)"
    else:
        said = f"**Says {target}: {says(s.generation_success)}**"
    counts = [c for c in (verdict_count(report.rephrases, "rephrases", target),
                          verdict_count(report.probes, "locality probes", target)) if c]
    lines = [f"{said} · **Plain reliability {pct(s.plain_reliability)}** (the prompt as typed)",
             f"p({target}) on the prompt: {p2(report.prompt.p_target_before)} → "
             f"**{p2(report.prompt.p_target_after)}**" + "".join(f" · {c}" for c in counts),
             f"edit {report.edit_ms / 1000:.2f} s, measuring {report.measure_ms / 1000:.1f} s"]
    if report.partial:
        lines.append("⏳ measuring the rephrases, the locality probes and the blast radius…")
    return "  \n".join(lines)


def paper_summary(report: EditReport | None) -> str:
    """Markdown: the paper protocol's three scores and p(target) on the wrapped edit input."""
    if report is None:
        return ""
    s = report.scores
    return (f"**Reliability {pct(s.reliability)}** · **Generalization {pct(s.generalization)}** · "
            f"**Locality {pct(s.locality)}**: {PAPER_PROTOCOL}  \n"
            f"p(target) on the edit input: {prob(report.wrapped.p_target_before)} → "
            f"**{prob(report.wrapped.p_target_after)}**")


def _rows(rows: Sequence[ProbeResult], target: str) -> list[list[str]]:
    return [[r.prompt, r.before.strip(), r.after.strip(), r.verdict, teacher_forced(r, target)] for r in rows]


def rephrase_table(report: EditReport | None) -> pd.DataFrame:
    """The rephrases as typed: continuations before/after, verdict, p(target)."""
    rows = [] if report is None else _rows(report.rephrases, report.target)
    return pd.DataFrame(rows, columns=REPHRASE_HEADERS)


def probe_table(report: EditReport | None) -> pd.DataFrame:
    """The locality probes: continuations before/after, verdict, p(own answer) and p(target)."""
    rows = [] if report is None else _rows(report.probes, report.target)
    return pd.DataFrame(rows, columns=PROBE_HEADERS)


def wrapped_table(report: EditReport | None) -> pd.DataFrame:
    """The rephrases as the editor read them (paper protocol): p(target), accuracy, continuation."""
    rows = [] if report is None else [
        [r.prompt, f"{prob(r.p_target_before)} → {prob(r.p_target_after)}", pct(r.target_accuracy),
         r.after.strip()] for r in report.wrapped_rephrases]
    return pd.DataFrame(rows, columns=WRAPPED_HEADERS)


def blast_table(report: EditReport | None) -> pd.DataFrame:
    """Every blast radius probe: group, continuations before/after, verdict, teacher-forced."""
    blast = report.blast if report is not None else None
    rows = [] if blast is None else [
        [r.prompt, GROUP_NAMES.get(r.group, r.group), r.before.strip(), r.after.strip(), r.verdict,
         teacher_forced(r, blast.target)] for r in blast.probes]
    return pd.DataFrame(rows, columns=BLAST_HEADERS)


def _changed(count, noun: str, target: str) -> str:
    text = f"{count.changed} of {count.total} {noun}"
    if count.now_say_target:
        text += f" ({count.now_say_target} now say{'s' if count.now_say_target == 1 else ''} {target})"
    return text


def blast_summary(blast: BlastRadius | None) -> str:
    """One line: ``changed 3 of 6 neighbours; 1 of 4 other facts about X; 0 of 6 unrelated``."""
    if blast is None:
        return "–"
    parts = []
    if blast.count(NEIGHBOUR).total:
        parts.append(_changed(blast.count(NEIGHBOUR), "neighbours", blast.target))
    if blast.count(FACT).total:
        parts.append(_changed(blast.count(FACT), f"other facts about {blast.subject}", blast.target))
    parts.append(_changed(blast.count(UNRELATED), "unrelated", blast.target))
    return "changed " + "; ".join(parts)


def blast_markdown(blast: BlastRadius | None, error: str | None = None) -> str:
    """The blast radius panel's heading: the summary line and where the probes came from."""
    if blast is None:
        return f"⚠ {error}" if error else ""
    return (f"**Blast radius: {blast_summary(blast)}.**  \n"
            f"Subject *{blast.subject or '(none)'}* ({blast.kind}); neighbours: {blast.source}. "
            f"A probe is unchanged when its verdict is *{SAME_ANSWER}*; the chart shows "
            f"p({blast.target}) on each probe before and after the edit.")


def blast_cell(blast: BlastRadius | None) -> str:
    """A compact history cell: changed / total per group."""
    if blast is None:
        return "–"
    labels = ((NEIGHBOUR, "nbr"), (FACT, "facts"), (UNRELATED, "unrel"))
    return " · ".join(f"{name} {c.changed}/{c.total}" for group, name in labels
                      if (c := blast.count(group)).total)


def instruction_label(task: str, instruction: int | str | None) -> str:
    """Short name of an instruction choice (``#3``, ``held out``, ``none``, or the custom text)."""
    if instruction is None:
        return "none"
    if isinstance(instruction, int):
        return "held out" if instruction == HELD_OUT_INDEX and get_task(task).instructions else f"#{instruction + 1}"
    if instruction == "heldout":
        return "held out"
    return f"custom: {instruction[:40]}"


def history_headers(slots: Sequence[str] = (BASELINE,)) -> list[str]:
    """The history's columns: InstructEdit's, then one per comparison slot shown."""
    return HISTORY_HEADERS[:-1] + [f"{'baseline' if s == BASELINE else SLOT_INFO[s].label}: {SCORES_HEADER}"
                                   for s in slots]


def history_widths(slots: Sequence[str] = (BASELINE,)) -> list[str]:
    return _WIDTHS_BY_COMPARISONS[len(slots)]


def history_table(entries: Sequence[HistoryEntry], slots: Sequence[str] = (BASELINE,)) -> pd.DataFrame:
    """The session's edits, one row each (``slots``: the comparison editors shown)."""
    rows = []
    for n, e in enumerate(entries, 1):
        r = e.request
        rows.append([n, e.id, get_task(r.task).display_name, instruction_label(r.task, r.instruction),
                     r.prompt, r.target, e.edit.created_at.replace("T", " ")[:19],
                     scores_cell(e.scores), blast_cell(e.blast), *(scores_cell(e.compared(s)[1]) for s in slots)])
    return pd.DataFrame(rows, columns=history_headers(slots))


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
