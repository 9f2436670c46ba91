"""Render ``docs/results.md`` from a :class:`~instructedit.evaluate.results.ResultsData`.

Every number and every finding is computed here from the run's results: the ``*_findings``
functions decide what the numbers say (which editor wins and by how many points, which of the
paper's findings reproduce, which goals are met) and return small dataclasses. The jinja2
templates in ``templates/`` only word and format what they are given; the tables are built here
and passed to them as markdown.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from ..defaults import DEFAULT_PATCH_RANK
from ..editing.schedule import EditSchedule
from ..instructions import BENCHMARK_TASKS, TASKS, TRAINING_TASKS, table_name
from .inputs import SEEN
from .results import (
    EVAL_TASKS,
    FRESH_INSTRUCTIONS,
    METHODS,
    USER_TASKS,
    Outcome,
    ResultsData,
    _mean,
    harmonic,
)
from .runner import EvalConfig

log = logging.getLogger(__name__)

TASK_NAMES = {t: table_name(t) for t in BENCHMARK_TASKS}
SHORT_NAMES = {t: TASKS[t].display_name for t in BENCHMARK_TASKS}
TRAINING = TRAINING_TASKS
METRICS = (("reliability", "Rel."), ("generalization", "Gen."), ("locality", "Loc."))
QUANT_NAMES = {"none": "fp32", "8bit": "8-bit (LLM.int8)", "4bit": "4-bit (nf4)"}
PAPER_GAIN = 14.86
SAME_BAND = 5.0  # points: "about as well"


# ----- formatting ------------------------------------------------------------------------------------
def pct(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{100 * value:.1f}"
    return f"**{text}**" if bold else text


def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def points(a: float | None, b: float | None) -> float | None:
    """``a - b`` in percentage points."""
    return None if a is None or b is None else 100 * (a - b)


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def quant_name(quant: str) -> str:
    return QUANT_NAMES.get(quant, quant)


def user_cell(value: float | None, key: str) -> str:
    """A plain-protocol measure as its column shows it (the fluency ratio is a ratio, not a %)."""
    if value is None:
        return "–"
    return f"{value:.2f}" if key == "fluency_ratio" else pct(value)


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("instructedit.evaluate", "templates"),
    undefined=jinja2.StrictUndefined, autoescape=False,
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
TEMPLATES.filters.update(pct=pct, num=num, signed=signed, fmt=format, quant_name=quant_name,
                         user_cell=user_cell)
TEMPLATES.globals.update(TASK_NAMES=TASK_NAMES, SHORT_NAMES=SHORT_NAMES)


def render(template: str, **values) -> str:
    """``templates/<template>`` rendered with ``values``.

    Each line of a template ends with a newline; the last one is dropped, so a template reads as
    its lines joined by newlines (a section that should end with a newline ends with a blank line).
    """
    return TEMPLATES.get_template(template).render(**values).removesuffix("\n")


# ----- context -----------------------------------------------------------------------------------
def model_id(data: ResultsData) -> str:
    for outcome in data.runs:
        if outcome.ok and outcome.summary.get("model_id"):
            return outcome.summary["model_id"]
    return data.config.model


def command(data: ResultsData) -> str:
    cfg = data.config
    parts = ["python -m instructedit results", f"--data {cfg.data}", f"--out {cfg.out}",
             f"--figures {cfg.figures}", f"--model {cfg.model}", f"--limit {cfg.limit}",
             f"--quant-limit {cfg.quant_records}", f"--pca-limit {cfg.pca_limit}",
             f"--sweep-limit {cfg.sweep_limit}", f"--split {cfg.split}", f"--seed {cfg.seed}",
             f"--user-limit {cfg.user_limit}", f"--user-quant {cfg.user_quant}"]
    if cfg.rome:
        parts += [f"--rome-tasks {','.join(cfg.rome_tasks)}",
                  f"--rome-limit {cfg.rome_limit if cfg.rome_limit is not None else cfg.limit}"]
    else:
        parts.append("--no-rome")
    if cfg.step_size is not None:
        parts.append(f"--step-size {cfg.step_size:g}")
    if cfg.lanes > 1:
        parts.append(f"--lanes {cfg.lanes} --cache-dir {cfg.cache_dir}")
    return " ".join(parts)


def _section(template: str, data: ResultsData, **values) -> str:
    """A section's template, given the run (for its settings line) and ``values``."""
    return render(template, data=data, model_id=model_id(data), **values)


def _avg(outcomes: dict, key: str, tasks: Sequence[str] = TRAINING) -> float | None:
    return _mean([outcomes[t].get(key) for t in tasks if t in outcomes])


def _ran(outcomes: dict) -> bool:
    """Whether any run of a task -> Outcome mapping produced a summary."""
    return any(o.ok for o in outcomes.values())


@dataclass(frozen=True)
class Delta:
    """One measure of ``a`` against ``b`` (fractions); :attr:`points` is ``a - b`` in points."""

    a: float | None
    b: float | None

    @property
    def points(self) -> float | None:
        return points(self.a, self.b)


# ----- section 1 -------------------------------------------------------------------------------------
def _cells(outcomes: dict, task: str, best: dict) -> list[str]:
    out = []
    for key, _ in METRICS:
        value = outcomes[task].get(key) if task in outcomes else None
        out.append(pct(value, bold=value is not None and best.get((task, key)) == value))
    return out


def _best(grid: dict, rows: Sequence[str]) -> dict:
    best = {}
    for task in EVAL_TASKS:
        for key, _ in METRICS:
            values = [grid[r][task].get(key) for r in rows if r in grid and task in grid[r]]
            values = [v for v in values if v is not None]
            if values:
                best[(task, key)] = max(values)
    return best


def method_row_note(data: ResultsData, method: str) -> str:
    if method == "Unedited":
        return "no edit: the floor (locality is 100 by definition)"
    if method == "Gradient step":
        return f"one plain gradient step, size {data.step_size or 0:g}"
    if method == "ROME":
        return ("rank-one locate-and-edit (Meng et al. 2022; `instructedit/editing/rome.py`): no training; one "
                "optimisation per edit on the plain prompt; needs the subject; n/a on ConvSent")
    card = data.editors.get(method)
    if not card:
        return "checkpoint missing"
    return f"`{card['path']}`"


def table3_table(data: ResultsData, grid: dict | None = None) -> str:
    """Section 1's table of ``grid`` (default: ``data.table3``)."""
    grid = data.table3 if grid is None else grid
    edited = [m for m in METHODS if m != "Unedited"]
    best = _best(grid, edited)
    header = ["Method"] + [f"{TASK_NAMES[t]} {label}" for t in EVAL_TASKS for _, label in METRICS]
    rows = []
    for method in METHODS:
        if method not in grid:
            continue
        if not _ran(grid[method]):
            reason = next(iter(grid[method].values())).reason
            rows.append([method] + ["n/a"] * (len(header) - 1))
            log.info("%s unavailable: %s", method, reason)
            continue
        cells = [c for t in EVAL_TASKS for c in _cells(grid[method], t, best if method != "Unedited" else {})]
        rows.append([method] + cells)
    return table(header, rows)


def table3_extras_table(data: ResultsData) -> str:
    header = ["Method", "Recent Port.", "ZsRE Port.", "ConvSent sentiment success", "ConvSent KL drawdown",
              "ConvSent fluency", "Target log-prob lift (nats/token)", "Edit latency (ms/edit)"]
    rows = []
    for method in METHODS:
        g = data.table3.get(method, {})
        if not _ran(g):
            continue
        lift = _mean([o.get("target_prob_lift") for o in g.values()])
        latency = _mean([o.get("edit_latency_ms") for o in g.values()])
        rows.append([method, pct(g["recent"].get("portability")), pct(g["zsre"].get("portability")),
                     pct(g["convsent"].get("sentiment_success")), num(g["convsent"].get("kl_drawdown"), 3),
                     num(g["convsent"].get("fluency")), num(lift), num(latency, 0)])
    return table(header, rows)


def gain_size(gain: float | None) -> str | None:
    """How a reliability gain of instructions compares with the paper's +14.86 points: ``as-large``,
    ``same-order`` (at least half), ``much-smaller``; None when there is no gain."""
    if gain is None or gain <= 0:
        return None
    if gain >= PAPER_GAIN:
        return "as-large"
    return "same-order" if gain >= PAPER_GAIN / 2 else "much-smaller"


@dataclass(frozen=True)
class Headline:
    """The paper's headline: InstructEdit vs multi-task MEND reliability on the training tasks."""

    reliability: Delta
    size: str | None            # see gain_size; None: no gain, the headline does not reproduce
    paper_gain: float = PAPER_GAIN

    @property
    def reproduces(self) -> bool:
        return self.size is not None


@dataclass(frozen=True)
class Reasons:
    """Why a finding may not reproduce, from the backbone and the checkpoints' provenance."""

    model_id: str
    parameters: int | None
    steps: tuple[int, ...]      # () unknown; (n,) every editor; (fewest, most)
    near_ceiling: bool          # both editors above 90% reliability


@dataclass(frozen=True)
class HoldOut:
    """Hold-out ZsRE, InstructEdit against multi-task MEND."""

    reliability: Delta
    generalization: Delta
    locality: Delta
    instructedit_better: bool   # on reliability, as the paper finds


@dataclass(frozen=True)
class AgainstStep:
    """The harmonic mean of reliability and locality over all tasks, best first."""

    step_size: float
    ranked: tuple[tuple[str, float], ...]
    training_pays_off: bool     # the plain gradient step comes last


@dataclass(frozen=True)
class Steering:
    """ConvSent sentiment success after InstructEdit's edits against the unedited model."""

    success: Delta
    unedited_steered: bool      # the unedited model already hits the target sentiment most times


@dataclass(frozen=True)
class Table3Findings:
    available: bool             # both trained editors ran
    headline: Headline | None = None
    reasons: Reasons | None = None
    locality: Delta | None = None
    harmonic: Delta | None = None
    holdout: HoldOut | None = None
    against_step: AgainstStep | None = None
    steering: Steering | None = None
    unedited_ran: bool = False
    floor: float | None = None  # the unedited model's mean reliability: where every editor starts


def reasons(data: ResultsData) -> Reasons:
    cards = [c for c in data.editors.values() if c]
    steps = [c.get("total_steps_run") or c.get("steps") for c in cards]
    steps = [s for s in steps if s]
    span = () if not steps else (min(steps),) if min(steps) == max(steps) else (min(steps), max(steps))
    ie, mend = data.table3.get("InstructEdit", {}), data.table3.get("MEND multi-task", {})
    both = [_avg(ie, "reliability"), _avg(mend, "reliability")]
    return Reasons(model_id(data), data.environment.get("model_parameters"), span,
                   all(v is not None and v > 0.9 for v in both))


def table3_findings(data: ResultsData) -> Table3Findings:
    g = data.table3
    ie, mend = g.get("InstructEdit", {}), g.get("MEND multi-task", {})
    grad, base = g.get("Gradient step", {}), g.get("Unedited", {})
    if not _ran(ie) or not _ran(mend):
        return Table3Findings(available=False)
    rel = Delta(_avg(ie, "reliability"), _avg(mend, "reliability"))
    loc = Delta(_avg(ie, "locality"), _avg(mend, "locality"))
    found = {"available": True, "headline": Headline(rel, gain_size(rel.points)), "reasons": reasons(data),
             "locality": loc, "harmonic": Delta(harmonic(rel.a, loc.a), harmonic(rel.b, loc.b))}
    z_ie, z_mend = ie.get("zsre"), mend.get("zsre")
    if z_ie and z_mend and z_ie.ok and z_mend.ok:
        z = {key: Delta(z_ie.get(key), z_mend.get(key)) for key, _ in METRICS}
        found["holdout"] = HoldOut(**z, instructedit_better=(z["reliability"].points or 0) > 0)
    if _ran(grad):
        hm = {name: harmonic(_avg(o, "reliability", EVAL_TASKS), _avg(o, "locality", EVAL_TASKS))
              for name, o in (("InstructEdit", ie), ("multi-task MEND", mend), ("the plain gradient step", grad))}
        ranked = sorted(hm, key=hm.get, reverse=True)
        found["against_step"] = AgainstStep(data.step_size, tuple((name, hm[name]) for name in ranked),
                                            ranked[-1] == "the plain gradient step")
    cs_base = base.get("convsent").get("sentiment_success") if base.get("convsent") else None
    cs_ie = ie.get("convsent").get("sentiment_success") if ie.get("convsent") else None
    if cs_base is not None and cs_ie is not None:
        found["steering"] = Steering(Delta(cs_ie, cs_base), cs_base > 0.5)
    if _ran(base):
        found.update(unedited_ran=True, floor=_avg(base, "reliability", EVAL_TASKS))
    return Table3Findings(**found)


@dataclass(frozen=True)
class RomeFindings:
    """ROME beside the trained editors on ROME's records: means over the tasks both ran."""

    tasks: tuple[str, ...]
    rows: tuple[tuple[str, float | None, float | None, float | None, float | None], ...]
    # (method, reliability, generalization, locality, harmonic mean of rel. and loc.), best first


def rome_findings(data: ResultsData) -> RomeFindings | None:
    grid = data.table3_rome
    rome = grid.get("ROME", {})
    tasks = tuple(t for t, o in rome.items() if o.ok)
    if not tasks:
        return None
    rows = []
    for method in ("ROME", "InstructEdit", "MEND multi-task", "Gradient step"):
        outcomes = grid.get(method, {})
        if not _ran({t: outcomes[t] for t in tasks if t in outcomes}):
            continue
        rel, gen, loc = (_avg(outcomes, key, tasks) for key in ("reliability", "generalization", "locality"))
        rows.append((method, rel, gen, loc, harmonic(rel, loc)))
    rows.sort(key=lambda row: -1 if row[4] is None else row[4], reverse=True)
    return RomeFindings(tasks, tuple(rows))


def section_table3(data: ResultsData) -> str:
    text = _section("table3.md.j2", data, table=table3_table(data), extras=table3_extras_table(data),
                    f=table3_findings(data))
    if data.table3_rome:
        found = rome_findings(data)
        names = ", ".join(SHORT_NAMES[t] for t in found.tasks) if found else ""
        text = text.rstrip() + "\n\n" + _section(
            "table3_rome.md.j2", data, table=table3_table(data, data.table3_rome), f=found, task_names=names)
    return text


# ----- section 2 -------------------------------------------------------------------------------------
def instructions_table(data: ResultsData) -> str:
    modes = [m for m in ("seen", "held-out", "fresh") if m in data.instructions]
    header = ["Task"] + [f"{mode} {label}" for mode in modes for _, label in METRICS]
    rows = []
    for task in EVAL_TASKS:
        cells = []
        for mode in modes:
            outcome = data.instructions[mode].get(task)
            cells += [pct(outcome.get(key)) if outcome else "–" for key, _ in METRICS]
        rows.append([TASK_NAMES[task]] + cells)
    means = ["**mean**"]
    for mode in modes:
        means += [pct(_avg(data.instructions[mode], key, EVAL_TASKS)) for key, _ in METRICS]
    rows.append(means)
    return table(header, rows)


@dataclass(frozen=True)
class ModeGap:
    """Reliability with one kind of unseen instruction (mean over the tasks, or on ``task``) and its
    gap to seen instructions, in points."""

    mode: str
    reliability: float | None
    gap: float | None
    task: str = ""


@dataclass(frozen=True)
class InstructionFindings:
    available: bool
    seen: float | None = None
    modes: tuple[ModeGap, ...] = ()
    unseen_close: bool = False  # every unseen kind within `band` points of seen, as the paper reports
    band: float = SAME_BAND
    largest: ModeGap | None = None   # the task and kind with the largest gap to seen


def instruction_findings(data: ResultsData) -> InstructionFindings:
    ins = data.instructions
    if not ins.get("seen") or not _ran(ins["seen"]):
        return InstructionFindings(available=False)
    seen = _avg(ins["seen"], "reliability", EVAL_TASKS)
    modes = []
    for mode in ("held-out", "fresh"):
        if mode in ins:
            rel = _avg(ins[mode], "reliability", EVAL_TASKS)
            modes.append(ModeGap(mode, rel, points(rel, seen)))
    close = all(m.gap is not None and abs(m.gap) <= SAME_BAND for m in modes)
    largest = None
    for task in EVAL_TASKS:
        for m in modes:
            a = ins[m.mode].get(task)
            b = ins["seen"].get(task)
            rel = a.get("reliability") if a else None
            gap = points(rel, b.get("reliability") if b else None)
            if gap is not None and (largest is None or abs(gap) > abs(largest.gap)):
                largest = ModeGap(m.mode, rel, gap, task)
    return InstructionFindings(True, seen, tuple(modes), close, SAME_BAND, largest)


def section_instructions(data: ResultsData) -> str:
    return _section("instructions.md.j2", data, table=instructions_table(data), fresh=FRESH_INSTRUCTIONS,
                    f=instruction_findings(data))


# ----- section 3 -------------------------------------------------------------------------------------
def _reason(grid: dict, default: str) -> str:
    return next((o.reason for o in grid.values() if o.reason), default)


def quantization_table(data: ResultsData) -> str:
    header = ["Backbone"] + [f"{TASK_NAMES[t]} {label}" for t in EVAL_TASKS for _, label in METRICS] + \
        ["ms/edit", "s/record"]
    rows = []
    for quant, grid in data.quantization.items():
        if not _ran(grid):
            rows.append([quant_name(quant)] + ["n/a"] * (len(header) - 1))
            log.info("%s unavailable: %s", quant, _reason(grid, "not available"))
            continue
        cells = [pct(grid[t].get(key)) for t in EVAL_TASKS for key, _ in METRICS]
        latency = _mean([o.get("edit_latency_ms") for o in grid.values()])
        secs = sum(o.get("seconds") or 0 for o in grid.values())
        n = sum(o.get("n") or 0 for o in grid.values())
        rows.append([quant_name(quant)] + cells + [num(latency, 0), num(secs / n if n else None, 2)])
    return table(header, rows)


@dataclass(frozen=True)
class QuantFinding:
    """A quantized backbone against fp32 (mean over the tasks)."""

    quant: str
    reliability: Delta
    locality: Delta
    transfers: bool             # reliability within SAME_BAND points of fp32 (or above)


@dataclass(frozen=True)
class QuantizationFindings:
    reference: bool             # the fp32 run exists
    backbones: tuple[QuantFinding, ...] = ()


def quantization_findings(data: ResultsData) -> QuantizationFindings:
    q = data.quantization
    if "none" not in q or not _ran(q["none"]):
        return QuantizationFindings(reference=False)
    ref_rel, ref_loc = _avg(q["none"], "reliability", EVAL_TASKS), _avg(q["none"], "locality", EVAL_TASKS)
    found = []
    for quant in ("8bit", "4bit"):
        if quant not in q or not _ran(q[quant]):
            continue
        rel = Delta(_avg(q[quant], "reliability", EVAL_TASKS), ref_rel)
        loc = Delta(_avg(q[quant], "locality", EVAL_TASKS), ref_loc)
        found.append(QuantFinding(quant, rel, loc, rel.points is not None and rel.points > -SAME_BAND))
    return QuantizationFindings(True, tuple(found))


def section_quantization(data: ResultsData) -> str:
    unavailable = [(quant_name(q), _reason(g, "")) for q, g in data.quantization.items() if not _ran(g)]
    return _section("quantization.md.j2", data, table=quantization_table(data), unavailable=unavailable,
                    f=quantization_findings(data))


def _rank_name(rank: int | None, default: int | None) -> str:
    name = "full rank" if rank is None else f"rank {rank}"
    return name + (" (default, as in the app)" if rank == default else "")


def patch_ranks_table(data: ResultsData) -> str:
    header = ["Storage"] + [f"{TASK_NAMES[t]} {label}" for t in EVAL_TASKS for _, label in METRICS]
    order = sorted(data.patch_ranks, key=lambda r: float("inf") if r is None else r)
    rows = []
    for rank in order:
        grid = data.patch_ranks[rank]
        rows.append([_rank_name(rank, data.default_patch_rank)] +
                    [pct(grid[t].get(key)) if t in grid else "–" for t in EVAL_TASKS for key, _ in METRICS])
    return table(header, rows)


@dataclass(frozen=True)
class PatchRankFindings:
    reference: bool             # both the full-rank and the default-rank runs exist
    default: int | None = None
    costs: dict = field(default_factory=dict)
    """task -> metric label -> the default storage rank minus full rank, in points (measured ones)."""


def patch_rank_findings(data: ResultsData) -> PatchRankFindings:
    grids = data.patch_ranks
    default = data.default_patch_rank
    if None not in grids or default not in grids or default is None:
        return PatchRankFindings(reference=False)
    costs = {}
    for task in EVAL_TASKS:
        full, cut = grids[None].get(task), grids[default].get(task)
        if full is None or cut is None or not full.ok or not cut.ok:
            continue
        drops = {label: points(cut.get(key), full.get(key)) for key, label in METRICS}
        costs[task] = {label: d for label, d in drops.items() if d is not None}
    return PatchRankFindings(True, default, costs)


def section_patch_ranks(data: ResultsData) -> str:
    if not data.patch_ranks:
        return ""
    return _section("patch_ranks.md.j2", data, table=patch_ranks_table(data), f=patch_rank_findings(data))


# ----- section 4 and 5 ---------------------------------------------------------------------------------
def analysis_table(data: ResultsData) -> str:
    rows = [[item["method"], "yes" if item["use_instructions"] else "no",
             ", ".join(f"{k} {v}" for k, v in item["n_per_task"].items()),
             num(item["silhouette_2d"], 3), num(item["silhouette_full"], 3),
             ", ".join(f"{k} {v:.2f}" for k, v in item.get("per_task_2d", {}).items()),
             pct(sum(item["explained_variance"]))] for item in data.analyses]
    return table(["Editor", "Instructions", "Edits", "Silhouette (2-D)", "Silhouette (full)",
                  "Per-task silhouette (2-D)", "Variance in 2 PCs (%)"], rows)


@dataclass(frozen=True)
class AnalysisFindings:
    both: bool                  # both editors were analysed
    silhouette_2d: Delta | None = None      # with instructions (a) vs without (b)
    silhouette_full: Delta | None = None
    verdict: str = ""           # 'separate' (both measures higher with instructions), 'overlap', 'disagree'
    better: dict = field(default_factory=dict)      # task -> 2-D silhouette with (a) vs without (b)
    not_better: dict = field(default_factory=dict)  # instructions, for tasks that separate better / not


def analysis_findings(data: ResultsData) -> AnalysisFindings:
    by = {item["method"]: item for item in data.analyses}
    ie, mend = by.get("InstructEdit"), by.get("MEND multi-task")
    if not ie or not mend:
        return AnalysisFindings(both=False)
    d2 = ie["silhouette_2d"] - mend["silhouette_2d"]
    dfull = ie["silhouette_full"] - mend["silhouette_full"]
    verdict = ("separate" if d2 > 0 and dfull > 0 else "overlap" if d2 <= 0 and dfull <= 0 else "disagree")
    a, b = ie.get("per_task_2d", {}), mend.get("per_task_2d", {})
    tasks = {t: Delta(a[t], b[t]) for t in a if t in b}
    return AnalysisFindings(True, Delta(ie["silhouette_2d"], mend["silhouette_2d"]),
                            Delta(ie["silhouette_full"], mend["silhouette_full"]), verdict,
                            {t: d for t, d in tasks.items() if d.a > d.b},
                            {t: d for t, d in tasks.items() if d.a <= d.b})


def section_analysis(data: ResultsData) -> str:
    cfg = data.config
    if not data.analyses:
        return _section("analysis.md.j2", data, analysed=False, note=data.analysis_note or "skipped.")
    out_dir = Path(cfg.out).parent
    figures = [(item["method"], os.path.relpath(Path(item["figure"]), out_dir))
               for item in data.analyses if item.get("figure")]
    log.debug("figures in %s", Path(cfg.figures))
    return _section("analysis.md.j2", data, analysed=True, module=data.analyses[0]["module"], figures=figures,
                    table=analysis_table(data), f=analysis_findings(data))


def section_scaling(data: ResultsData) -> str:
    rows = [[label, pct(o.get("reliability")), pct(o.get("generalization")), pct(o.get("locality"))]
            for label, o in data.scaling.items()]
    return _section("scaling.md.j2", data, scaled=bool(data.scaling), note=data.scaling_note or "skipped",
                    table=table(["Training tasks", "ZsRE Rel.", "ZsRE Gen.", "ZsRE Loc."], rows))


# ----- what a user sees (plain protocol) -------------------------------------------------------------
USER_METRICS = (("plain_reliability", "Plain rel."), ("plain_generalization", "Plain gen."),
                ("generation_success", "Gen. success"), ("neighbourhood_score", "NS"),
                ("neighbour_unchanged", "Nbr. unchanged"), ("neighbour_bleed", "Nbr. bleed"),
                ("unrelated_bleed", "Unrel. bleed"), ("fluency_ratio", "Fluency"), ("degenerate", "Degenerate"))
LOWER_IS_BETTER = {"neighbour_bleed", "unrelated_bleed", "degenerate"}
USER_GOALS = (("plain_reliability", ">=", 0.95), ("generation_success", ">=", 0.90),
              ("plain_generalization", ">=", 0.70), ("neighbour_bleed", "<=", 0.10),
              ("unrelated_bleed", "<=", 0.02), ("fluency_ratio", ">=", 0.97))
"""The shipped InstructEdit editor's goals on CounterFact (NS: within 0.05 of the unedited model)."""
NS_MARGIN = 0.05


def user_table(data: ResultsData) -> str:
    header = ["Method", "Task"] + [label for _, label in USER_METRICS]
    rows = []
    for method in METHODS:
        for task in USER_TASKS:
            outcome = data.user.get(method, {}).get(task)
            if outcome is None:
                continue
            if not outcome.ok:
                rows.append([method, SHORT_NAMES[task]] + ["n/a"] * len(USER_METRICS))
                continue
            rows.append([method, SHORT_NAMES[task]] + [user_cell(outcome.get(k), k) for k, _ in USER_METRICS])
    return table(header, rows)


@dataclass(frozen=True)
class GoalCheck:
    """One goal of the shipped editor: ``value op bound``, or for NS (op ``within``) ``value`` at
    most ``margin`` below the unedited model's ``bound``."""

    key: str
    label: str
    op: str
    value: float
    bound: float
    met: bool
    margin: float | None = None


def goal_checks(data: ResultsData, method: str = "InstructEdit", task: str = "counterfact") -> list[GoalCheck]:
    """Each goal of the shipped editor, met or not by this run's numbers."""
    outcome = data.user.get(method, {}).get(task)
    if outcome is None or not outcome.ok:
        return []
    checks = []
    labels = dict(USER_METRICS)
    for key, op, bound in USER_GOALS:
        value = outcome.get(key)
        if value is None:
            continue
        met = value >= bound if op == ">=" else value <= bound
        checks.append(GoalCheck(key, labels[key], op, value, bound, met))
    ceiling = data.user.get("Unedited", {}).get(task)
    ns = outcome.get("neighbourhood_score")
    if ceiling is not None and ceiling.ok and ns is not None and ceiling.get("neighbourhood_score") is not None:
        top = ceiling.get("neighbourhood_score")
        checks.append(GoalCheck("neighbourhood_score", labels["neighbourhood_score"], "within", ns, top,
                                ns >= top - NS_MARGIN, NS_MARGIN))
    return checks


@dataclass(frozen=True)
class ProtocolGap:
    """InstructEdit minus multi-task MEND reliability on one task (points), under the paper's
    (instruction-wrapped) protocol and the plain one, and where InstructEdit's advantage holds:
    ``both``, ``paper`` or ``plain`` protocol only, or ``neither``."""

    task: str
    paper: float | None
    plain: float | None
    holds: str


@dataclass(frozen=True)
class UserFindings:
    goals: tuple[GoalCheck, ...]
    protocols: tuple[ProtocolGap, ...]

    @property
    def met(self) -> list[GoalCheck]:
        return [c for c in self.goals if c.met]

    @property
    def missed(self) -> list[GoalCheck]:
        return [c for c in self.goals if not c.met]


def user_findings(data: ResultsData) -> UserFindings:
    ie, base = data.user.get("InstructEdit", {}), data.user.get("MEND multi-task", {})
    protocols = []
    for task in USER_TASKS:
        a, b = ie.get(task), base.get(task)
        if not (a and b and a.ok and b.ok):
            continue
        gap = points(a.get("plain_reliability"), b.get("plain_reliability"))
        # the same runs carry the paper's (instruction-wrapped) reliability: same records, same backbone
        paper_gap = points(a.get("reliability"), b.get("reliability"))
        wins = (paper_gap is not None and paper_gap > 0, gap is not None and gap > 0)
        holds = {(True, True): "both", (True, False): "paper", (False, True): "plain",
                 (False, False): "neither"}[wins]
        protocols.append(ProtocolGap(task, paper_gap, gap, holds))
    return UserFindings(tuple(goal_checks(data)), tuple(protocols))


def section_user(data: ResultsData) -> str:
    return _section("user.md.j2", data, table=user_table(data), tokens=cfg_tokens(), f=user_findings(data))


def cfg_tokens() -> int:
    return EvalConfig().generation_tokens


# ----- causal tracing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceFindings:
    top: tuple[tuple[int, float], ...]   # (layer, indirect effect), strongest five first
    rome_agrees: bool           # ROME edits the layer this run's trace points to
    known_answers: bool         # traced on records the model answers right (else its own answers)


def trace_findings(data: ResultsData) -> TraceFindings:
    tr = data.trace
    effects = tr["effects"]
    top = sorted(range(len(effects)), key=lambda i: -effects[i])[:5]
    return TraceFindings(tuple((i, effects[i]) for i in top), tr["rome_uses"] == tr["rome_layer"],
                         tr.get("answers") == "known")


def section_trace(data: ResultsData) -> str:
    tr = data.trace
    if not tr:
        return _section("trace.md.j2", data, tr=tr)
    f = trace_findings(data)
    return _section("trace.md.j2", data, tr=tr, f=f, figure=Path(tr["figure"]).name,
                    table=table(["Layer (MLP window centre)", "Indirect effect"],
                                [[str(i), f"{effect:+.4f}"] for i, effect in f.top]))


# ----- whole report ------------------------------------------------------------------------------------
def setup_table(data: ResultsData) -> str:
    cfg = data.config
    rows = []
    for method in METHODS:
        card = data.editors.get(method)
        if method == "ROME":
            if cfg.rome:
                rows.append([method, method_row_note(data, method), "no", "–", "–", "–"])
            continue
        if method in ("Unedited", "Gradient step"):
            rows.append([method, method_row_note(data, method), "yes" if method == "Gradient step" else "–",
                         "–", "–", "–"])
        elif card:
            best, total = card.get("steps"), card.get("total_steps_run")
            steps = "–" if best is None else (f"{best} (best of {total})" if total and total != best else str(best))
            wall = card.get("wall_time_s")
            schedule = card.get("edit_schedule")
            path = f"`{card['path']}`" + (f" (edits: {EditSchedule.from_dict(schedule).describe()})"
                                          if schedule else "")
            rows.append([method, path, "yes" if card.get("use_instructions") else "no", steps,
                         f"{wall / 60:.0f} min" if wall else "–", num(card.get("validation_score"), 3)])
        else:
            rows.append([method, "missing", "–", "–", "–", "–"])
    return table(["Method", "Checkpoint", "Instructions", "Training steps", "Training time", "Val. score"], rows)


def section_setup(data: ResultsData) -> str:
    return _section("setup.md.j2", data, table=setup_table(data), patch_rank=DEFAULT_PATCH_RANK,
                    cached=sum(1 for o in data.runs if o.cached))


def runs_table(data: ResultsData) -> str:
    rows = []
    for o in data.runs:
        s = o.spec
        instruction = "custom text" if s.instruction not in (SEEN, "heldout", None) else str(s.instruction)
        if o.ok and o.summary.get("use_instructions") is False:
            instruction = "none (editor without instructions)"
        method = s.method if s.patch_rank == "default" else f"{s.method} ({_rank_name(s.patch_rank, None)})"
        rows.append([method, s.task, quant_name(s.quant), instruction,
                     s.split, str(o.get("n") or 0),
                     (num(o.get("seconds"), 1) + (" (cached)" if o.cached else "")) if o.ok else f"n/a ({o.reason})"])
    for item in data.analyses:
        rows.append([f"PCA {item['method']}", "all", "fp32", "seen" if item["use_instructions"] else "none",
                     data.config.split, str(sum(item["n_per_task"].values())), num(item["seconds"], 1)])
    return table(["Run", "Task", "Backbone", "Instruction", "Split", "Records", "Seconds"], rows)


def section_runs(data: ResultsData) -> str:
    return render("runs.md.j2", table=runs_table(data))


SECTION_RENDERERS = (("user", section_user), ("table3", section_table3),
                     ("instructions", section_instructions), ("quant", section_quantization),
                     ("ranks", section_patch_ranks), ("analysis", section_analysis),
                     ("scaling", section_scaling), ("trace", section_trace))
"""Report sections in the order they appear (``config.sections`` picks which)."""


def render_report(data: ResultsData) -> str:
    chosen = set(data.config.sections)
    sections = [render("intro.md.j2", command=command(data), finished=data.finished), section_setup(data)]
    sections += [section(data) for name, section in SECTION_RENDERERS if name in chosen]
    sections.append(section_runs(data))
    return "\n\n".join(s.rstrip() for s in sections if s) + "\n"


def write_report(data: ResultsData) -> Path:
    """Write the markdown report to ``data.config.out``."""
    path = Path(data.config.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data), encoding="utf-8")
    return path


__all__ = ["render_report", "write_report", "Outcome"]
