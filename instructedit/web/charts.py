"""The blast radius chart: the new target's probability on each probe, before vs after the edit.

A plain :class:`matplotlib.figure.Figure` (no pyplot state), drawn by ``gr.Plot``.
"""
from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch as Swatch

from ..measuring.verdicts import CHANGED, NOW_SAYS, SAME_ANSWER
from .blast import FACT, NEIGHBOUR, UNRELATED, BlastRadius

GROUP_LABELS = {NEIGHBOUR: "other subject", FACT: "same subject", UNRELATED: "unrelated"}
BEFORE_COLOR = "#9ca3af"
VERDICT_COLORS = {SAME_ANSWER: "#16a34a", CHANGED: "#f59e0b", NOW_SAYS: "#dc2626"}
MAX_LABEL = 48


def _label(prompt: str, group: str) -> str:
    text = prompt if len(prompt) <= MAX_LABEL else prompt[: MAX_LABEL - 1] + "…"
    return f"{text}  [{GROUP_LABELS.get(group, group)}]"


def _color(verdict: str) -> str:
    for key, color in VERDICT_COLORS.items():
        if verdict.startswith(key):
            return color
    return VERDICT_COLORS[CHANGED]


def blast_chart(blast: BlastRadius | None, title: str = "") -> Figure | None:
    """Horizontal bars per probe: p(target) before (grey) and after (coloured by the verdict)."""
    if blast is None or not blast.probes:
        return None
    probes = blast.probes
    n = len(probes)
    fig = Figure(figsize=(8, 0.34 * n + 1.6), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(n))
    ax.barh([y - 0.2 for y in ys], [p.p_target_before for p in probes], height=0.38, color=BEFORE_COLOR)
    ax.barh([y + 0.2 for y in ys], [p.p_target_after for p in probes], height=0.38,
            color=[_color(p.verdict) for p in probes])
    ax.set_yticks(ys, [_label(p.prompt, p.group) for p in probes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"p({blast.target}) on the probe (teacher-forced)")
    ax.grid(axis="x", alpha=0.3)
    swatches = [Swatch(color=BEFORE_COLOR, label="before the edit")]
    swatches += [Swatch(color=c, label=f"after: {v}" + (f" {blast.target}" if v == NOW_SAYS else ""))
                 for v, c in VERDICT_COLORS.items()]
    fig.legend(handles=swatches, loc="outside lower center", ncols=len(swatches), fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
