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

import os
import platform
import time
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
    for section in SECTIONS:
        if section in config.sections:
            SECTION_RUNNERS[section](runner, data)
    data.environment["model_parameters"] = runner.backbone("none").parameter_count()
    data.runs = runner.runs
    data.seconds = time.perf_counter() - started
    data.finished = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data.environment["torch_threads"] = torch.get_num_threads()
    return data
