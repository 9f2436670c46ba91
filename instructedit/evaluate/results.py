"""The results report: run every evaluation of ``docs/results.md`` (``python -m instructedit results``,
:mod:`instructedit.cli.evaluate`; its settings are :mod:`.config`) and collect what it shows.

Sections: (1) Table 3 in kind (unedited, plain gradient step, multi-task MEND, InstructEdit on
CounterFact, Recent, ConvSent and the held-out ZsRE); (2) seen vs unseen instructions; (3) fp32 /
8-bit / 4-bit backbones; (4) PCA of transformed gradients; (5) task scaling when such
checkpoints exist. Every number in the report comes from this run (see :mod:`.report`).

This module runs them in order (:func:`run_all`); the parts live in modules of their own:
:mod:`.results_data` (the report's grid, a run's spec and outcome, the data the report shows),
:mod:`.run_store` (backbones, records and editors loaded once; each evaluation's summary cached
with ``--cache-dir``, so an interrupted run resumes) and :mod:`.sections` (one ``run_*`` per
section). Their names stay importable from here.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from .config import SECTIONS, ResultsConfig
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
from .run_store import CACHE_VERSION, ResultsRunner, checkpoint_card
from .sections import (
    SECTION_RUNNERS,
    STEP_CANDIDATES,
    _mean,
    choose_step_size,
    harmonic,
    instructedit_subset,
    run_analysis,
    run_instructions,
    run_patch_ranks,
    run_quantization,
    run_scaling,
    run_table3,
    run_trace,
    run_user,
)

__all__ = [
    "CACHE_VERSION", "EVAL_TASKS", "FRESH_INSTRUCTIONS", "METHODS", "SECTIONS", "STEP_CANDIDATES",
    "USER_TASKS", "Outcome", "ResultsConfig", "ResultsData", "ResultsRunner", "RunSpec", "_mean",
    "checkpoint_card", "choose_step_size", "environment", "harmonic", "instructedit_subset",
    "run_all", "run_analysis", "run_instructions", "run_patch_ranks", "run_quantization",
    "run_scaling", "run_table3", "run_trace", "run_user", "subset",
]

log = logging.getLogger(__name__)


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


EVALUATION_SECTIONS = frozenset(SECTIONS) - {"analysis", "trace"}
"""Sections made only of cached evaluations (:class:`RunSpec`): what lanes share."""


def _new_data(config: ResultsConfig) -> ResultsData:
    data = ResultsData(config=config, environment=environment(config.device),
                       started=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    for method, path in (("MEND multi-task", config.baseline), ("InstructEdit", config.instructedit)):
        data.editors[method] = checkpoint_card(path)
    return data


def _run_sections(runner: ResultsRunner, data: ResultsData, sections) -> None:
    config = runner.config
    if {"user", "table3"} & set(config.sections):
        data.step_size = choose_step_size(runner, data)
    for section in SECTIONS:
        if section in config.sections and section in sections:
            SECTION_RUNNERS[section](runner, data)


def run_lane(config: ResultsConfig, run_id: str, lane: int) -> None:
    """One lane's share of a results run: every evaluation no other lane has claimed, cached in
    ``config.cache_dir`` (the lane that writes the report reads them back)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    runner = ResultsRunner(config, run_id)
    runner.skip_claimed = True
    _run_sections(runner, _new_data(config), EVALUATION_SECTIONS)
    log.info("lane %d done: %d evaluation(s) run or read", lane, len(runner.runs))


LANE_START_TIMEOUT_S = 300.0


def _exit_with_parent(parent: int, poll: float = 5.0) -> None:
    """End this lane when the process that started it is gone (its claims then go stale and are
    taken over by whoever resumes the run)."""
    while os.getppid() == parent:
        time.sleep(poll)
    log.warning("the results run that started this lane is gone; stopping")
    os._exit(1)


def _lane_process(config: ResultsConfig, run_id: str, lane: int, level: int, ready) -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s lane {lane} %(name)s: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(multiprocessing.parent_process().pid,), daemon=True).start()
    try:
        ready.wait(LANE_START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        pass  # the first lane went on without this one: take what is left
    run_lane(config, run_id, lane)


def _start_lanes(config: ResultsConfig, run_id: str) -> list:
    """Start the other lanes and wait until each has started (a lane that starts late would find
    its share taken); a lane that does not start in time is left to catch up."""
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    ready = context.Barrier(config.lanes)
    lanes = [context.Process(target=_lane_process, args=(config, run_id, lane, level, ready), daemon=True,
                             name=f"results-lane-{lane}") for lane in range(1, config.lanes)]
    for process in lanes:
        process.start()
    try:
        ready.wait(LANE_START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        log.warning("not every lane started within %.0f s; going on", LANE_START_TIMEOUT_S)
    return lanes


def run_all(config: ResultsConfig) -> ResultsData:
    """Run every section and return what the report shows.

    With ``config.lanes`` above 1, that many processes share the evaluations (each claims the next
    one nobody runs, through ``config.cache_dir``); this one then reads them all back in order and
    runs the sections that are not evaluations (tracing, PCA).
    """
    if config.lanes > 1 and not config.cache_dir:
        raise ValueError("several lanes need a cache folder (cache_dir) to share their evaluations")
    if config.lanes > 1 and not config.threads:
        config = replace(config, threads=max(1, (os.cpu_count() or 1) // config.lanes))
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    run_id = f"{os.getpid()}-{time.time_ns()}"
    helpers = _start_lanes(config, run_id) if config.lanes > 1 else []
    data = _new_data(config)
    runner = ResultsRunner(config, run_id)
    try:
        if helpers:
            runner.skip_claimed = True
            _run_sections(runner, _new_data(config), EVALUATION_SECTIONS)
            runner.skip_claimed = False
            runner.runs = []
        _run_sections(runner, data, SECTIONS)
    finally:
        for process in helpers:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
    data.environment["model_parameters"] = runner.backbone("none").parameter_count()
    data.runs = runner.runs
    data.seconds = time.perf_counter() - started
    data.finished = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data.environment["torch_threads"] = torch.get_num_threads()
    return data
