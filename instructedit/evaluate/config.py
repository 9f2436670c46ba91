"""The settings of the results report (:mod:`.results`): torch-free, so that the command line can
show their defaults in ``--help`` without loading the evaluation."""
from __future__ import annotations

from dataclasses import dataclass

from ..defaults import DEFAULT_MODEL, QUANT_MODES, SHIPPED_BASELINE, SHIPPED_EDITOR

QUANTS: tuple[str, ...] = QUANT_MODES
ROME_TASKS: tuple[str, ...] = ("counterfact", "recent", "zsre")
"""ROME rewrites a subject's fact; ConvSent's opinion edits have no fact to locate (n/a there)."""
SECTIONS: tuple[str, ...] = ("user", "table3", "instructions", "analysis", "scaling", "ranks", "quant",
                             "trace")
"""Sections of the report, in run order (``--sections`` picks some)."""


@dataclass
class ResultsConfig:
    """Settings of a results run (all recorded in the report).

    Each field is also a flag of ``python -m instructedit results`` (``pca_limit``:
    ``--pca-limit``), with its entry below as the help text.

    Attributes:
        data: data folder.
        out: markdown file to write.
        figures: folder for PNG figures.
        model: backbone alias, folder or hub id.
        instructedit: InstructEdit checkpoint.
        baseline: multi-task MEND checkpoint without instructions.
        step_size: plain gradient step size (default: chosen by a sweep on the val splits).
        limit: records per task and run.
        quant_limit: records per task for the 8/4-bit backbones, 8-bit being slow on a CPU
            (None: ``limit``).
        pca_limit: records per task for the PCA.
        sweep_limit: val records per task for the step-size sweep.
        split: evaluation split.
        seed: seeds splits, samples and instructions.
        batch_size: records per pass.
        quants: quantization modes of the backbones of section 3.
        patch_ranks: storage ranks of InstructEdit's edits compared with the default (``None``,
            or ``full`` on the command line: full rank).
        device: cpu, cuda or auto.
        threads: torch CPU threads (default: torch's).
        cache_dir: cache each evaluation's summary here and reuse it (resume an interrupted run).
        lanes: processes that share the evaluations (each runs the next one no other has claimed;
            needs ``cache_dir``); ``threads`` is then each one's (default: the CPUs shared out).
        progress: show progress bars.
        user_quant: quantization of the backbone of the "what a user sees" section (as the app
            runs it by default).
        user_limit: records per task of the "what a user sees" section.
        sections: sections of the report to run, in run order.
        rome: run ROME beside the trained editors (sections 'user' and 'table3').
        rome_tasks: tasks ROME runs on (a subset saves time: ROME optimises every edit).
        rome_limit: records per task of ROME in section 'table3' (ROME optimises every edit, 15-30 s
            each on a CPU): below ``limit``, ROME gets its own table beside every method on those
            records (a nested sample: the others' runs re-summarised, not rerun); None: ``limit``.
        trace_limit: known CounterFact test records averaged by causal tracing (section 'trace').
    """

    data: str = "data"
    out: str = "docs/results.md"
    figures: str = "docs/figures"
    model: str = DEFAULT_MODEL
    instructedit: str = str(SHIPPED_EDITOR)
    baseline: str = str(SHIPPED_BASELINE)
    step_size: float | None = None
    limit: int = 100
    quant_limit: int | None = 50
    pca_limit: int = 100
    sweep_limit: int = 12
    split: str = "test"
    seed: int = 0
    batch_size: int = 8
    quants: tuple[str, ...] = QUANTS
    patch_ranks: tuple[int | None, ...] = (1, 4, None)
    device: str = "auto"
    threads: int | None = None
    cache_dir: str | None = None
    lanes: int = 1
    progress: bool = True
    user_quant: str = "4bit"
    user_limit: int = 50
    sections: tuple[str, ...] = SECTIONS
    rome: bool = True
    rome_tasks: tuple[str, ...] = ROME_TASKS
    rome_limit: int | None = 30
    trace_limit: int = 20

    @property
    def quant_records(self) -> int:
        return self.quant_limit if self.quant_limit is not None else self.limit

    @property
    def rome_apart(self) -> bool:
        """Whether section 'table3' shows ROME in a table of its own, on fewer records."""
        return self.rome and self.rome_limit is not None and self.rome_limit < self.limit
