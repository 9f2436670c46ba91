"""The results report: run every evaluation of ``docs/results.md`` (``python -m instructedit results``,
:mod:`instructedit.cli.evaluate`; its settings are :mod:`.config`) and write it.

Sections: (1) Table 3 in kind (unedited, plain gradient step, multi-task MEND, InstructEdit on
CounterFact, Recent, ConvSent and the held-out ZsRE); (2) seen vs unseen instructions; (3) fp32 /
8-bit / 4-bit backbones; (4) PCA of transformed gradients; (5) task scaling when such
checkpoints exist. Every number in the report comes from this run (see :mod:`.report`).
Optionally each evaluation's summary is cached (``--cache-dir``) so an interrupted run resumes.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from ..data.tasks import TASKS, TRAINING_TASKS
from ..defaults import DEFAULT_PATCH_RANK
from ..editing.checkpoint import CheckpointError, read_checkpoint_config
from ..editing.editor import Editor
from ..editing.rome import TRACED_LAYERS, default_layer
from ..model.backbone import BackboneError, load_backbone
from ..tracing import LAST_SUBJECT, average_indirect_effect, save_heatmap
from .analysis import analysis_records, analyze
from .config import ROME_TASKS, SECTIONS, ResultsConfig
from .editors import editor_label, load_eval_editor
from .inputs import SEEN, InstructionChoice, describe_instruction
from .metrics import RecordResult, summarize
from .runner import EvalConfig, Evaluator
from .selection import limit_records, load_eval_records

log = logging.getLogger(__name__)

CACHE_VERSION = 2
EVAL_TASKS: tuple[str, ...] = TASKS  # counterfact, recent, convsent, zsre (held out)
STEP_CANDIDATES: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
"""Plain gradient step sizes tried on the val splits; the best harmonic mean of reliability and
locality wins (the criterion the trained editors were validated with)."""

FRESH_INSTRUCTIONS: dict[str, str] = {
    "counterfact": "Imagine this fact is different now and finish the sentence with the new, untrue answer.",
    "recent": "The subject has a brand-new property; reply with its current value.",
    "convsent": "From today on, talk about [TOPIC] in a [LABEL] tone and leave every other subject as it was.",
    "zsre": "Read the question about the subject and name the one entity it is asking for.",
}
"""Instructions written for this report only: never seen in training and not among the ten."""

METHODS: tuple[str, ...] = ("Unedited", "Gradient step", "MEND multi-task", "InstructEdit", "ROME")
USER_TASKS: tuple[str, ...] = ("counterfact", "recent", "zsre")
"""Tasks of the plain protocol (short answers a continuation can contain; ConvSent has none)."""


@dataclass(frozen=True)
class RunSpec:
    """One evaluation of the report."""

    method: str
    task: str
    editor: str                      # 'none', 'gradient' or a checkpoint folder
    quant: str = "none"
    instruction: InstructionChoice = SEEN
    split: str = "test"
    limit: int = 100
    step_size: float | None = None
    sentiment: bool = True
    patch_rank: int | None | str = "default"   # 'default': the editor's DEFAULT_PATCH_RANK
    plain: bool = False                        # also measure the plain protocol (slower)

    def label(self) -> str:
        return (f"{self.method} / {self.task} / {self.quant} / "
                f"{describe_instruction(self.instruction)} / {self.split}")


@dataclass
class Outcome:
    """The result of one :class:`RunSpec`: its summary, or why it could not run."""

    spec: RunSpec
    summary: dict | None = None
    editor_name: str = ""
    reason: str = ""
    records: list = field(default_factory=list)    # per-record results (RecordResult dicts)

    @property
    def ok(self) -> bool:
        return self.summary is not None

    def get(self, key: str):
        return None if self.summary is None else self.summary.get(key)


@dataclass
class ResultsData:
    """Everything the report shows."""

    config: ResultsConfig
    environment: dict
    started: str
    finished: str = ""
    seconds: float = 0.0
    editors: dict = field(default_factory=dict)          # method -> checkpoint card
    sweep: list = field(default_factory=list)            # (step, rel, loc, score)
    step_size: float | None = None
    step_chosen_by: str = ""
    table3: dict = field(default_factory=dict)           # method -> task -> Outcome
    instructions: dict = field(default_factory=dict)     # mode -> task -> Outcome
    quantization: dict = field(default_factory=dict)     # quant -> task -> Outcome
    patch_ranks: dict = field(default_factory=dict)      # rank (None: full) -> task -> Outcome
    default_patch_rank: int | None = None
    analyses: list = field(default_factory=list)         # AnalysisResult dicts
    analysis_note: str = ""
    scaling: dict = field(default_factory=dict)          # label -> Outcome
    user: dict = field(default_factory=dict)             # method -> task -> Outcome (plain protocol)
    trace: dict = field(default_factory=dict)            # causal tracing averaged over records
    scaling_note: str = ""
    runs: list = field(default_factory=list)             # Outcome, in run order


def environment(device: str) -> dict:
    """Machine and library versions (for the report header)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and device != "cpu" else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(terse=True)}


def checkpoint_card(path: str) -> dict | None:
    """Name, instructions flag and training provenance of a checkpoint (None if absent)."""
    try:
        config = read_checkpoint_config(path)
    except CheckpointError:
        return None
    prov = config.get("provenance", {}) or {}
    return {"path": str(path), "name": config.get("name"), "use_instructions": config.get("use_instructions"),
            "steps": prov.get("steps"), "total_steps_run": prov.get("total_steps_run"),
            "wall_time_s": prov.get("total_wall_time_s", prov.get("wall_time_s")),
            "tasks": prov.get("tasks"), "stopped_early": prov.get("stopped_early"),
            "validation_score": (prov.get("validation") or {}).get("score"),
            "editor": config.get("editor")}


class ResultsRunner:
    """Loads backbones, records and editors once and runs :class:`RunSpec` evaluations."""

    def __init__(self, config: ResultsConfig) -> None:
        self.config = config
        self._backbones: dict = {}
        self._records: dict = {}
        self._editors: dict = {}
        self.runs: list[Outcome] = []

    # ----- resources -------------------------------------------------------------------------
    def backbone(self, quant: str):
        if quant not in self._backbones:
            log.info("loading %s (%s)", self.config.model, quant)
            self._backbones[quant] = load_backbone(self.config.model, quant, device=self.config.device)
        return self._backbones[quant]

    def release(self, quant: str) -> None:
        """Drop a backbone (and its editors) that is no longer needed."""
        self._backbones.pop(quant, None)
        for key in [k for k in self._editors if k[1] == quant]:
            del self._editors[key]
        gc.collect()

    def records(self, task: str, split: str, limit: int | None = None):
        """A seeded sample of ``limit`` records of a split (all of it when ``limit`` is None)."""
        key = (task, split, limit)
        if key not in self._records:
            if limit is None:
                self._records[key] = load_eval_records(self.config.data, task, split, self.config.seed)
            else:
                self._records[key] = limit_records(self.records(task, split), limit, self.config.seed)
        return self._records[key]

    def editor(self, spec: RunSpec):
        key = (spec.editor, spec.quant, spec.step_size, spec.patch_rank)
        if key not in self._editors:
            self._editors[key] = load_eval_editor(spec.editor, self.backbone(spec.quant), spec.step_size,
                                                  spec.patch_rank)
        return self._editors[key]

    # ----- caching ---------------------------------------------------------------------------
    def _cache_file(self, spec: RunSpec) -> Path | None:
        if not self.config.cache_dir:
            return None
        stamp = None
        weights = Path(spec.editor) / "editor.safetensors"
        if weights.is_file():
            stat = weights.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        key = json.dumps({"v": CACHE_VERSION, "spec": asdict(spec), "stamp": stamp,
                          "model": self.config.model, "seed": self.config.seed,
                          "data": str(Path(self.config.data).resolve()),
                          "batch": self.config.batch_size, "patch_rank": DEFAULT_PATCH_RANK},
                         sort_keys=True, default=str)
        return Path(self.config.cache_dir) / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")

    # ----- running ---------------------------------------------------------------------------
    def run(self, spec: RunSpec) -> Outcome:
        """Evaluate ``spec`` (or read its cached summary); never raises for a missing checkpoint."""
        if spec.editor not in ("none", "gradient", "rome") and checkpoint_card(spec.editor) is None:
            outcome = Outcome(spec, reason=f"no editor checkpoint at {spec.editor}")
            self.runs.append(outcome)
            return outcome
        cache = self._cache_file(spec)
        if cache is not None and cache.is_file():
            data = json.loads(cache.read_text())
            outcome = Outcome(spec, data["summary"], data["editor_name"], records=data.get("records", []))
            log.info("cached: %s", spec.label())
            self.runs.append(outcome)
            return outcome
        try:
            editor = self.editor(spec)
        except (CheckpointError, BackboneError) as exc:
            log.warning("%s: %s", spec.label(), exc)
            outcome = Outcome(spec, reason=str(exc))
            self.runs.append(outcome)
            return outcome
        config = EvalConfig(instruction=spec.instruction, batch_size=self.config.batch_size,
                            seed=self.config.seed, sentiment=spec.sentiment,
                            progress=self.config.progress, plain=spec.plain)
        records = self.records(spec.task, spec.split, spec.limit)
        pool = self.records(spec.task, spec.split) if spec.plain else None
        result = Evaluator(self.backbone(spec.quant), editor, config, neighbour_pool=pool).run(
            records, desc=f"{spec.method[:16]} {spec.task} {spec.quant}")
        summary = result.summary.to_dict()
        summary.update(model_id=self.backbone(spec.quant).model_id,
                       use_instructions=True if editor is None else editor.use_instructions)
        outcome = Outcome(spec, summary, editor_label(editor), records=[r.to_dict() for r in result.records])
        log.info("%s: reliability %.3f locality %s (%.0f s)", spec.label(), result.summary.reliability,
                 result.summary.locality, result.summary.seconds)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"summary": outcome.summary, "editor_name": outcome.editor_name,
                                         "records": outcome.records}))
        self.runs.append(outcome)
        return outcome


def harmonic(a: float | None, b: float | None) -> float:
    if a is None or b is None or a + b <= 0:
        return 0.0
    return 2 * a * b / (a + b)


def choose_step_size(runner: ResultsRunner, data: ResultsData) -> float:
    """The plain gradient step: fixed by ``--step-size``, else the best of a val-split sweep."""
    cfg = runner.config
    if cfg.step_size is not None:
        data.step_chosen_by = "fixed on the command line (--step-size)"
        return cfg.step_size
    best, best_score = STEP_CANDIDATES[0], -1.0
    for step in STEP_CANDIDATES:
        outcomes = [runner.run(RunSpec("Gradient sweep", task, "gradient", split="val",
                                       limit=cfg.sweep_limit, step_size=step, sentiment=False))
                    for task in TRAINING_TASKS]
        rel = _mean([o.get("reliability") for o in outcomes])
        loc = _mean([o.get("locality") for o in outcomes])
        score = harmonic(rel, loc)
        data.sweep.append({"step": step, "reliability": rel, "locality": loc, "score": score})
        if score > best_score:
            best, best_score = step, score
    data.step_chosen_by = (f"the best harmonic mean of reliability and locality over the val splits of "
                           f"{', '.join(TRAINING_TASKS)} ({cfg.sweep_limit} records each) among "
                           f"{', '.join(f'{s:g}' for s in STEP_CANDIDATES)}")
    return best


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _method_grid(runner: ResultsRunner, data: ResultsData, tasks: Sequence[str], **spec) -> dict:
    """Every method of :data:`METHODS` on every task of ``tasks`` (method -> task -> Outcome)."""
    cfg = runner.config
    editors = {"Unedited": "none", "Gradient step": "gradient", "MEND multi-task": cfg.baseline,
               "InstructEdit": cfg.instructedit, "ROME": "rome"}
    grid: dict = {}
    for method in METHODS:
        if method == "ROME" and not cfg.rome:
            continue
        step = data.step_size if method == "Gradient step" else None
        grid[method] = {}
        for task in tasks:
            if method == "ROME" and task not in ROME_TASKS:
                grid[method][task] = Outcome(RunSpec(method, task, "rome"), reason="n/a: no subject fact")
                continue
            if method == "ROME" and task not in cfg.rome_tasks:
                grid[method][task] = Outcome(RunSpec(method, task, "rome"), reason="not run (--rome-tasks)")
                continue
            grid[method][task] = runner.run(RunSpec(method, task, editors[method], split=cfg.split,
                                                    step_size=step, **spec))
    return grid


def run_table3(runner: ResultsRunner, data: ResultsData) -> None:
    data.table3 = _method_grid(runner, data, EVAL_TASKS, limit=runner.config.limit)


def run_user(runner: ResultsRunner, data: ResultsData) -> None:
    """The plain protocol (what a user sees) for every method, on the app's backbone."""
    cfg = runner.config
    data.user = _method_grid(runner, data, USER_TASKS, quant=cfg.user_quant, limit=cfg.user_limit,
                             sentiment=False, plain=True)
    if cfg.user_quant != "none":
        runner.release(cfg.user_quant)


def run_trace(runner: ResultsRunner, data: ResultsData) -> None:
    """Causal tracing averaged over CounterFact test records the model knows: where facts live,
    and so which layer ROME edits (the MLP restoration at the last subject token)."""
    cfg = runner.config
    backbone = runner.backbone("none")
    records = [r for r in runner.records("counterfact", cfg.split) if r.subject.strip()]
    random.Random(f"trace:{cfg.seed}").shuffle(records)
    window = max(1, round(backbone.adapter.num_layers(backbone.model) / 6))
    started = time.perf_counter()
    answers = "known"
    try:
        result = average_indirect_effect(backbone, records, tokens="last_subject", answers=answers,
                                         limit=cfg.trace_limit, window=window, kinds=("mlp",),
                                         seed=cfg.seed)
    except ValueError:  # the model knows none of them (a tiny test model): trace its own answers
        answers = "greedy"
        result = average_indirect_effect(backbone, records, tokens="last_subject", answers=answers,
                                         limit=cfg.trace_limit, window=window, kinds=("mlp",),
                                         seed=cfg.seed)
    column = result.effects["mlp"][:, result.categories.index(LAST_SUBJECT)]
    figure = save_heatmap(result, Path(cfg.figures) / "trace_counterfact.png")
    data.trace = {"n_records": result.n_records, "window": window, "answers": answers, "mean_clean": result.mean_clean,
                  "mean_corrupted": result.mean_corrupted, "effects": [float(x) for x in column],
                  "best_layer": result.best_layer("mlp"), "rome_layer": result.rome_layer(),
                  "rome_uses": default_layer(backbone), "stored": TRACED_LAYERS.get(backbone.model_id),
                  "figure": str(figure), "seconds": round(time.perf_counter() - started, 1)}


def run_instructions(runner: ResultsRunner, data: ResultsData) -> None:
    cfg = runner.config
    data.instructions["seen"] = dict(data.table3.get("InstructEdit", {}))
    for mode, choice in (("held-out", "heldout"), ("fresh", None)):
        data.instructions[mode] = {}
        for task in EVAL_TASKS:
            instruction = FRESH_INSTRUCTIONS[task] if mode == "fresh" else choice
            data.instructions[mode][task] = runner.run(RunSpec(
                "InstructEdit", task, cfg.instructedit, instruction=instruction, split=cfg.split,
                limit=cfg.limit))


def subset(outcome: Outcome, ids: set[str]) -> Outcome | None:
    """``outcome`` re-summarised over the records in ``ids`` (None if some are missing).

    Seconds are scaled by the share of records kept.
    """
    rows = [RecordResult(**r) for r in outcome.records if r["id"] in ids]
    if not outcome.ok or len(rows) != len(ids):
        return None
    seconds = (outcome.summary.get("seconds") or 0.0) * len(rows) / max(1, len(outcome.records))
    summary = summarize(rows, seconds).to_dict()
    summary.update({k: outcome.summary[k] for k in ("model_id", "use_instructions") if k in outcome.summary})
    return Outcome(outcome.spec, summary, outcome.editor_name, records=[r.to_dict() for r in rows])


def instructedit_subset(runner: ResultsRunner, data: ResultsData, task: str) -> Outcome | None:
    """Section 1's fp32 InstructEdit run of ``task`` restricted to the smaller sections' records."""
    cfg = runner.config
    reference = data.table3.get("InstructEdit", {}).get(task)
    if reference is None or cfg.quant_records > cfg.limit:
        return None
    return subset(reference, {r.id for r in runner.records(task, cfg.split, cfg.quant_records)})


def run_quantization(runner: ResultsRunner, data: ResultsData) -> None:
    """InstructEdit per backbone; the fp32 row reuses section 1's records (samples are nested)."""
    cfg = runner.config
    for quant in cfg.quants:
        data.quantization[quant] = {}
        for task in EVAL_TASKS:
            reused = instructedit_subset(runner, data, task) if quant == "none" else None
            if reused is not None:
                data.quantization[quant][task] = reused
                continue
            data.quantization[quant][task] = runner.run(RunSpec(
                "InstructEdit", task, cfg.instructedit, quant=quant, split=cfg.split,
                limit=cfg.quant_records))
        if quant != "none":
            runner.release(quant)


def run_patch_ranks(runner: ResultsRunner, data: ResultsData) -> None:
    """InstructEdit with its edits stored at other ranks; the default row reuses section 1's records."""
    cfg = runner.config
    data.default_patch_rank = DEFAULT_PATCH_RANK
    ranks = [DEFAULT_PATCH_RANK] + [r for r in cfg.patch_ranks if r != DEFAULT_PATCH_RANK]
    for rank in ranks:
        data.patch_ranks[rank] = {}
        for task in EVAL_TASKS:
            reused = instructedit_subset(runner, data, task) if rank == DEFAULT_PATCH_RANK else None
            if reused is not None:
                data.patch_ranks[rank][task] = reused
                continue
            data.patch_ranks[rank][task] = runner.run(RunSpec(
                "InstructEdit", task, cfg.instructedit, split=cfg.split, limit=cfg.quant_records,
                sentiment=False, patch_rank=rank))


def run_analysis(runner: ResultsRunner, data: ResultsData) -> None:
    cfg = runner.config
    records = analysis_records(cfg.data, cfg.pca_limit, cfg.split, cfg.seed)
    settings = (("InstructEdit", cfg.instructedit, "pca_instructedit.png"),
                ("MEND multi-task", cfg.baseline, "pca_mend_multitask.png"))
    missing = [path for _, path, _ in settings if checkpoint_card(path) is None]
    if missing:
        data.analysis_note = f"skipped: no editor checkpoint at {', '.join(missing)}"
        return
    for method, path, png in settings:
        started = time.perf_counter()
        editor = Editor.from_pretrained(path, runner.backbone("none"))
        label = "with instructions" if editor.use_instructions else "without instructions"
        result = analyze(editor, records, Path(cfg.figures) / png, seed=cfg.seed,
                         batch_size=cfg.batch_size, title=f"{method} ({label})")
        item = result.to_dict()
        item.update(method=method, seconds=round(time.perf_counter() - started, 1))
        data.analyses.append(item)


def run_scaling(runner: ResultsRunner, data: ResultsData) -> None:
    """Hold-out ZsRE per number of training tasks, if editors trained on different task sets exist."""
    cfg = runner.config
    root = Path(cfg.instructedit).parent
    found: dict[tuple, str] = {}
    for cfg_file in sorted(root.glob("*/editor.json")):
        card = checkpoint_card(str(cfg_file.parent))
        if card and card["use_instructions"] and card.get("tasks"):
            found.setdefault(tuple(card["tasks"]), str(cfg_file.parent))
    if len(found) < 2:
        sets = "; ".join(", ".join(t) for t in found) or "none"
        data.scaling_note = (f"skipped: it needs InstructEdit editors trained on different numbers of "
                             f"tasks, and the instruction editors under {root} were trained on: {sets}")
        return
    for tasks, path in sorted(found.items(), key=lambda kv: len(kv[0])):
        label = f"{len(tasks)} task(s): {', '.join(tasks)}"
        data.scaling[label] = runner.run(RunSpec("InstructEdit", "zsre", path, split=cfg.split, limit=cfg.limit))


def run_all(config: ResultsConfig) -> ResultsData:
    """Run every section and return what the report shows."""
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    data = ResultsData(config=config, environment=environment(config.device),
                       started=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    for method, path in (("MEND multi-task", config.baseline), ("InstructEdit", config.instructedit)):
        data.editors[method] = checkpoint_card(path)
    runner = ResultsRunner(config)
    if {"user", "table3"} & set(config.sections):
        data.step_size = choose_step_size(runner, data)
    steps = {"user": run_user, "table3": run_table3, "instructions": run_instructions,
             "analysis": run_analysis, "scaling": run_scaling, "ranks": run_patch_ranks,
             "quant": run_quantization, "trace": run_trace}
    for section in SECTIONS:
        if section in config.sections:
            steps[section](runner, data)
    data.environment["model_parameters"] = runner.backbone("none").parameter_count()
    data.runs = runner.runs
    data.seconds = time.perf_counter() - started
    data.finished = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data.environment["torch_threads"] = torch.get_num_threads()
    return data
