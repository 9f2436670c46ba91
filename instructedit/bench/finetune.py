"""Section 4: the InstructEdit editor against constrained fine-tuning, on CounterFact test edits.

Fine-tuning trains the same edited matrices (the editor's modules) of a float copy of the
backbone with Adam on the target's NLL after the raw prompt, keeping every weight within
``linf`` of its original value, until every target token is the greedy prediction or a step cap;
the copy is restored before the next edit (the restore is not timed). The editor edits the same
records on the shared backbone with patches. Both are scored by :func:`.workload.score_case`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import nn

from ..backbone import Backbone
from ..data.records import EditRecord
from ..editor import Editor
from ..merge import float_copy
from ..patches import PatchEngine
from ..scoring import full_model_answer_logits, score_answers
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
    """Adam on ``module_names``' weights of a float copy, restored after every edit."""

    def __init__(self, backbone: Backbone, module_names: Sequence[str], config: FinetuneConfig) -> None:
        self.backbone = backbone
        self.config = config
        self.model: nn.Module = float_copy(backbone)
        self.weights = [self.model.get_submodule(n).weight for n in module_names]
        self.originals = [w.detach().clone() for w in self.weights]

    def restore(self) -> None:
        with torch.no_grad():
            for weight, original in zip(self.weights, self.originals, strict=True):
                weight.copy_(original)
                weight.grad = None

    def edit(self, batch) -> int:
        """Fine-tune on one (prompt, target) batch; returns the optimisation steps taken."""
        cfg = self.config
        for w in self.weights:
            w.requires_grad_(True)
        optimizer = torch.optim.Adam(self.weights, lr=cfg.lr)
        steps = 0
        try:
            with torch.enable_grad():
                while True:
                    scores = score_answers(full_model_answer_logits(self.model, batch), batch)
                    if bool(scores.token_accuracy.min() >= 1.0) or steps >= cfg.max_steps:
                        break
                    optimizer.zero_grad(set_to_none=True)
                    scores.mean_nll.sum().backward()
                    optimizer.step()
                    steps += 1
                    if cfg.linf is not None:
                        with torch.no_grad():
                            for w, w0 in zip(self.weights, self.originals, strict=True):
                                w.copy_(w0 + (w - w0).clamp_(-cfg.linf, cfg.linf))
        finally:
            for w in self.weights:
                w.requires_grad_(False)
        return steps


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
        steps = finetuner.edit(raw.edit)
        ft_ms.append((time.perf_counter() - start) * 1000)
        ft_steps.append(steps)
        ft_scores.append(score_case(finetuner.model, raw, pre_raw))
        finetuner.restore()
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
