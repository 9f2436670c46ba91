"""The sections of the results report: each ``run_*`` fills its part of
:class:`~.results_data.ResultsData` through a :class:`~.run_store.ResultsRunner` (Table 3 in kind,
what a user sees, seen vs unseen instructions, backbones, patch ranks, PCA of transformed
gradients, task scaling, causal tracing); :data:`SECTION_RUNNERS` names them as ``--sections``
does. The plain gradient step is chosen first (:func:`choose_step_size`)."""
from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

from ..data.tasks import TRAINING_TASKS
from ..defaults import DEFAULT_PATCH_RANK
from ..editing.editor import Editor
from ..editing.rome import TRACED_LAYERS, default_layer
from ..tracing import LAST_SUBJECT, average_indirect_effect, save_heatmap
from .analysis import analysis_records, analyze
from .config import ROME_TASKS
from .results_data import (
    EVAL_TASKS,
    FRESH_INSTRUCTIONS,
    METHODS,
    USER_TASKS,
    Outcome,
    ResultsData,
    RunSpec,
    subset,
)
from .run_store import ResultsRunner, checkpoint_card

STEP_CANDIDATES: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
"""Plain gradient step sizes tried on the val splits; the best harmonic mean of reliability and
locality wins (the criterion the trained editors were validated with)."""


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
    specs = {step: [RunSpec("Gradient sweep", task, "gradient", split="val", limit=cfg.sweep_limit,
                            step_size=step, sentiment=False) for task in TRAINING_TASKS]
             for step in STEP_CANDIDATES}
    if runner.skip_claimed:  # several lanes: share the sweep out before waiting for its results
        for spec in (spec for row in specs.values() for spec in row):
            runner.run(spec)
    for step in STEP_CANDIDATES:
        outcomes = [runner.run(spec, decides=True) for spec in specs[step]]
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


def _method_grid(runner: ResultsRunner, data: ResultsData, tasks: Sequence[str],
                 methods: Sequence[str] = METHODS, **spec) -> dict:
    """Every method of ``methods`` on every task of ``tasks`` (method -> task -> Outcome)."""
    cfg = runner.config
    editors = {"Unedited": "none", "Gradient step": "gradient", "MEND multi-task": cfg.baseline,
               "InstructEdit": cfg.instructedit, "ROME": "rome"}
    grid: dict = {}
    for method in methods:
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
    """Every method on every task; with ``rome_limit`` below ``limit``, ROME on fewer records in a
    table of its own (:attr:`ResultsData.table3_rome`) beside the others' runs cut to those records."""
    cfg = runner.config
    methods = [m for m in METHODS if not (m == "ROME" and cfg.rome_apart)]
    data.table3 = _method_grid(runner, data, EVAL_TASKS, methods, limit=cfg.limit)
    if not cfg.rome_apart:
        return
    rome = _method_grid(runner, data, EVAL_TASKS, ("ROME",), limit=cfg.rome_limit)["ROME"]
    data.table3_rome = {method: {task: nested_subset(runner, outcome, cfg.rome_limit) or outcome
                                 for task, outcome in by_task.items()}
                        for method, by_task in data.table3.items()}
    data.table3_rome["ROME"] = rome


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


def nested_subset(runner: ResultsRunner, outcome: Outcome | None, limit: int) -> Outcome | None:
    """``outcome`` (a run on ``config.limit`` records) re-summarised over the seeded sample of
    ``limit`` records of its task (samples are nested); None when it cannot be."""
    cfg = runner.config
    if outcome is None or not outcome.ok or limit > cfg.limit:
        return None
    return subset(outcome, {r.id for r in runner.records(outcome.spec.task, cfg.split, limit)})


def instructedit_subset(runner: ResultsRunner, data: ResultsData, task: str) -> Outcome | None:
    """Section 1's fp32 InstructEdit run of ``task`` restricted to the smaller sections' records."""
    return nested_subset(runner, data.table3.get("InstructEdit", {}).get(task), runner.config.quant_records)


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



SECTION_RUNNERS = {"user": run_user, "table3": run_table3, "instructions": run_instructions,
                   "analysis": run_analysis, "scaling": run_scaling, "ranks": run_patch_ranks,
                   "quant": run_quantization, "trace": run_trace}
"""The runner of each section of :data:`~.config.SECTIONS` (run in that order)."""
