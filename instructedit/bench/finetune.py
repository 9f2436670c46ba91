"""Section 4: the InstructEdit editor against constrained fine-tuning, on CounterFact test edits.

Both methods are measured as ``eval`` measures any editor: by the evaluator
(:class:`instructedit.evaluate.runner.Evaluator`), on the same records, with the same result types
(:class:`~instructedit.evaluate.metrics.RecordResult`, :class:`~instructedit.evaluate.metrics.EvalSummary`).
The evaluator's passes hold one record each (:data:`EDITS_PER_PASS`), so a record's ``latency_ms``
is the time of one edit, as an interactive user waits for it.

Fine-tuning is the editing layer's :class:`~instructedit.editing.finetune.FineTuneEditor` (what
``load_editor("finetune")`` loads) with the bench's settings (:class:`.config.FinetuneConfig`), on
the editor's own matrices of the same backbone: Adam on the target's NLL after the raw prompt,
every weight kept within ``linf`` of its original value, until every target token is the greedy
prediction or a step cap; its change is a patch, so the backbone is unchanged for the next edit.
The editor edits the instruction-wrapped prompt (:data:`.workload.BENCH_INSTRUCTION`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from ..data.records import EditRecord
from ..editing.editor import Editor
from ..editing.finetune import FineTuneConfig, FineTuneEditor, FineTuneResult
from ..editing.patches import Patch
from ..evaluate.runner import EvalResult, Evaluator
from .config import FinetuneConfig
from .stats import ratio, summarize
from .workload import eval_config, summary_scores

EDITS_PER_PASS = 1
"""Records per evaluator pass: one, so that each record's latency is that of a single edit."""


class StepCountingFineTune(FineTuneEditor):
    """:class:`~instructedit.editing.finetune.FineTuneEditor` that keeps the optimiser steps of
    every edit it made (the report shows how many steps fine-tuning needed)."""

    def __init__(self, editor: Editor, config: FinetuneConfig) -> None:
        super().__init__(editor.backbone,
                         FineTuneConfig(lr=config.lr, max_steps=config.max_steps, linf=config.linf),
                         module_names=editor.module_names)
        self.steps: list[int] = []

    def fine_tune(self, prompts: Sequence[str], targets: Sequence[str],
                  active: Sequence[Patch] = ()) -> FineTuneResult:
        result = super().fine_tune(prompts, targets, active)
        self.steps += result.steps
        return result


def measure(editor, records: Sequence[EditRecord], desc: str) -> EvalResult:
    """``editor`` on ``records`` through the evaluator (the paper protocol of ``eval``)."""
    return Evaluator(editor.backbone, editor, eval_config(EDITS_PER_PASS)).run(records, desc)


def compare_with_finetuning(editor: Editor, records: Sequence[EditRecord], config: FinetuneConfig,
                            goal_speedup: float = 10.0) -> dict:
    """Latency and reliability/generalization/locality of the editor and of fine-tuning."""
    finetuner = StepCountingFineTune(editor, config)
    ours = measure(editor, records, "bench editor")
    theirs = measure(finetuner, records, "bench fine-tuning")
    return summarize_comparison(ours, theirs, finetuner.steps, config, goal_speedup)


def method_summary(result: EvalResult) -> dict:
    """Latency per edit and mean scores of one method (``None``: no record had that score)."""
    return {"latency_ms": summarize([r.latency_ms for r in result.records]).to_dict(),
            **summary_scores(result.summary)}


def summarize_comparison(ours: EvalResult, theirs: EvalResult, ft_steps: list[int],
                         config: FinetuneConfig, goal_speedup: float) -> dict:
    editor = method_summary(ours)
    finetune = {**method_summary(theirs), "steps": summarize(ft_steps).to_dict(),
                "hit_step_cap": sum(s >= config.max_steps for s in ft_steps), "config": asdict(config)}
    speedup = ratio(finetune["latency_ms"]["median"], editor["latency_ms"]["median"])
    total_speedup = ratio(sum(r.latency_ms for r in theirs.records),
                          sum(r.latency_ms for r in ours.records))
    rel_ok = editor["reliability"] >= finetune["reliability"]
    loc_ok = (editor["locality"] is not None and finetune["locality"] is not None
              and editor["locality"] > finetune["locality"])
    return {"records": len(ours.records), "editor": editor, "finetune": finetune,
            "speedup": round(speedup, 3), "total_time_speedup": round(total_speedup, 3),
            "goal_speedup": goal_speedup, "speed_met": speedup >= goal_speedup,
            "reliability_met": rel_ok, "locality_met": loc_ok,
            "met": speedup >= goal_speedup and rel_ok and loc_ok,
            "measured_by": "instructedit.evaluate.runner.Evaluator "
                           f"(batch size {EDITS_PER_PASS}, as eval measures every editor)"}
