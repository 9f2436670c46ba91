"""Section 4: the InstructEdit editor against constrained fine-tuning, on CounterFact test edits.

Fine-tuning (:func:`instructedit.editing.finetune.fine_tune`) trains the same edited matrices (the
editor's modules) of a float copy of the backbone with Adam on the target's NLL after the raw
prompt, keeping every weight within ``linf`` of its original value, until every target token is
the greedy prediction or a step cap; the weight change is scored as a patch on the copy (building
the patch is not timed), so the copy is unchanged for the next edit. The editor edits the same
records on the shared backbone with patches. Both are scored by :func:`.workload.score_case`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict

from torch import nn

from ..data.records import EditRecord
from ..editing.editor import Editor
from ..editing.finetune import FineTuneConfig, FineTuneResult, fine_tune
from ..editing.merge import float_copy
from ..editing.patches import PatchEngine
from ..model.backbone import Backbone
from .config import FinetuneConfig
from .stats import ratio, summarize
from .workload import (
    CaseScores,
    case_batches,
    edit_request,
    editor_case,
    locality_argmax,
    mean_scores,
    raw_case,
    score_case,
)

log = logging.getLogger(__name__)


class ConstrainedFinetuner:
    """Constrained fine-tuning (:mod:`instructedit.editing.finetune`) of ``module_names`` of a float copy."""

    def __init__(self, backbone: Backbone, module_names: Sequence[str], config: FinetuneConfig) -> None:
        self.backbone = backbone
        self.config = config
        self.model: nn.Module = _without_forward_hooks(float_copy(backbone))
        self.module_names = list(module_names)
        self.settings = FineTuneConfig(lr=config.lr, max_steps=config.max_steps, linf=config.linf)
        PatchEngine.for_model(self.model, self.module_names)

    def edit(self, batch) -> FineTuneResult:
        """Fine-tune on one (prompt, target) batch (the copy's weights are never written)."""
        return fine_tune(self.model, self.module_names, batch, self.settings)


def _without_forward_hooks(model: nn.Module) -> nn.Module:
    """``model`` without forward hooks: a deep copy takes over the backbone's patch and
    intervention hooks, which would run a second time next to the copy's own."""
    for module in model.modules():
        module._forward_hooks.clear()
        module._forward_hooks_with_kwargs.clear()
        module._forward_hooks_always_called.clear()
    return model


def compare_with_finetuning(editor: Editor, records: Sequence[EditRecord], config: FinetuneConfig,
                            goal_speedup: float = 10.0) -> dict:
    """Latency and reliability/generalization/locality of the editor and of fine-tuning."""
    backbone = editor.backbone
    finetuner = ConstrainedFinetuner(backbone, editor.module_names, config)
    ed_ms, ed_scores, ft_ms, ft_scores, ft_steps = [], [], [], [], []
    for record in records:
        request = edit_request(record)
        # the editor (shared backbone, patch)
        batches = case_batches(backbone.tokenizer, editor_case(record, editor.use_instructions),
                               backbone.device)
        pre = locality_argmax(backbone.model, batches)
        start = time.perf_counter()
        edit = editor.edit(request)
        ed_ms.append((time.perf_counter() - start) * 1000)
        with PatchEngine.activate(edit.patch):
            ed_scores.append(score_case(backbone.model, batches, pre))
        # fine-tuning (float copy, raw prompt)
        raw = case_batches(backbone.tokenizer, raw_case(record), backbone.device)
        pre_raw = locality_argmax(finetuner.model, raw)
        start = time.perf_counter()
        result = finetuner.edit(raw.edit)
        ft_ms.append((time.perf_counter() - start) * 1000)
        ft_steps.append(result.steps[0])
        with PatchEngine.activate(result.patch(0)):
            ft_scores.append(score_case(finetuner.model, raw, pre_raw))
    return summarize_comparison(ed_ms, ed_scores, ft_ms, ft_scores, ft_steps, config, goal_speedup)


def summarize_comparison(ed_ms: list[float], ed_scores: list[CaseScores], ft_ms: list[float],
                         ft_scores: list[CaseScores], ft_steps: list[int], config: FinetuneConfig,
                         goal_speedup: float) -> dict:
    editor = {"latency_ms": summarize(ed_ms).to_dict(), **mean_scores(ed_scores)}
    finetune = {"latency_ms": summarize(ft_ms).to_dict(), **mean_scores(ft_scores),
                "steps": summarize(ft_steps).to_dict(),
                "hit_step_cap": sum(s >= config.max_steps for s in ft_steps), "config": asdict(config)}
    speedup = ratio(finetune["latency_ms"]["median"], editor["latency_ms"]["median"])
    total_speedup = ratio(sum(ft_ms), sum(ed_ms))
    rel_ok = editor["reliability"] >= finetune["reliability"]
    loc_ok = (editor["locality"] is not None and finetune["locality"] is not None
              and editor["locality"] > finetune["locality"])
    return {"records": len(ed_ms), "editor": editor, "finetune": finetune,
            "speedup": round(speedup, 3), "total_time_speedup": round(total_speedup, 3),
            "goal_speedup": goal_speedup, "speed_met": speedup >= goal_speedup,
            "reliability_met": rel_ok, "locality_met": loc_ok,
            "met": speedup >= goal_speedup and rel_ok and loc_ok}
