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
    """Settings of a results run (all recorded in the report)."""

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
    """Storage ranks of InstructEdit's edits compared with the default (None: full rank)."""
    device: str = "auto"
    threads: int | None = None
    cache_dir: str | None = None
    progress: bool = True
    user_quant: str = "4bit"
    """Backbone of the "what a user sees" section (as the app runs it by default)."""
    user_limit: int = 100
    sections: tuple[str, ...] = SECTIONS
    rome: bool = True
    """Run ROME beside the trained editors (sections 'user' and 'table3')."""
    rome_tasks: tuple[str, ...] = ROME_TASKS
    """Tasks ROME runs on (a subset saves time: ROME optimises every edit)."""
    trace_limit: int = 20
    """CounterFact test records the model knows, averaged by causal tracing (section 'trace')."""

    @property
    def quant_records(self) -> int:
        return self.quant_limit if self.quant_limit is not None else self.limit
