"""The edits a benchmark makes (CounterFact test records) and how the sections that score one
edit at a time outside the evaluator (section 3's compression study, section 6's sequential loop)
score it; section 4 measures through the evaluator (:mod:`.finetune`).

Scoring uses :mod:`instructedit.scoring` only: reliability is the teacher-forced token accuracy of
the target on the edit input, generalization the same on the record's rephrases, locality the
share of unchanged argmax predictions on its unrelated probes (agreement with the model before
the edit).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data.records import EditRecord
from ..data.tasks import load_split
from ..editing.editor import MAX_TARGET_TOKENS, EditRequest
from ..measuring.single import mean_known
from ..scoring import AnswerBatch, agreement, full_model_answer_logits, score_answers, tokenize_answers

BENCH_TASK = "counterfact"
BENCH_INSTRUCTION = 0


def counterfact_records(data_dir: str, n: int, seed: int = 0) -> list[EditRecord]:
    """The first ``n`` CounterFact test records (the split's fixed order)."""
    records = load_split(data_dir, BENCH_TASK, "test", seed)
    if not records:
        raise ValueError(f"{data_dir}: the CounterFact test split is empty")
    return [records[i % len(records)] for i in range(n)]


def edit_request(record: EditRecord) -> EditRequest:
    """The editor's request for ``record`` (a seen CounterFact instruction)."""
    return EditRequest(prompt=record.prompt, target=record.target_new, task=record.task,
                       instruction=BENCH_INSTRUCTION, rephrases=tuple(record.rephrases),
                       probes=tuple(p.prompt for p in record.locality),
                       subject=record.subject or None)


@dataclass(frozen=True)
class EditCase:
    """One record as a method sees it: its edit input, rephrases and unrelated probes."""

    record_id: str
    edit_input: str
    target: str
    rephrases: tuple[str, ...]
    locality: tuple[tuple[str, str], ...]


def editor_case(record: EditRecord, use_instructions: bool) -> EditCase:
    """The case of the InstructEdit editor: edit input and rephrases wrapped with the instruction
    (only stripped without instructions)."""
    request = edit_request(record)
    return EditCase(record.id, request.edit_input(use_instructions), record.target_new,
                    tuple(request.wrap(r, use_instructions) for r in record.rephrases),
                    tuple((p.prompt, p.answer) for p in record.locality))


@dataclass
class CaseBatches:
    edit: AnswerBatch
    rephrase: AnswerBatch | None
    locality: AnswerBatch | None


def case_batches(tokenizer, case: EditCase, device) -> CaseBatches:
    def batch(prompts: Sequence[str], answers: Sequence[str]) -> AnswerBatch | None:
        if not prompts:
            return None
        return tokenize_answers(tokenizer, list(prompts), list(answers),
                                max_answer_tokens=MAX_TARGET_TOKENS).to(device)

    return CaseBatches(batch([case.edit_input], [case.target]),
                       batch(case.rephrases, [case.target] * len(case.rephrases)),
                       batch([p for p, _ in case.locality], [a for _, a in case.locality]))


@dataclass(frozen=True)
class CaseScores:
    reliability: float
    generalization: float | None
    locality: float | None


@torch.no_grad()
def locality_argmax(model: nn.Module, batches: CaseBatches) -> torch.Tensor | None:
    """Argmax predictions on the probes' answer positions (call before the edit)."""
    if batches.locality is None:
        return None
    return full_model_answer_logits(model, batches.locality).argmax(-1)


@torch.no_grad()
def score_case(model: nn.Module, batches: CaseBatches, pre_locality: torch.Tensor | None) -> CaseScores:
    """Scores of the edited model (``model`` under the edit's patches, or an edited copy)."""
    rel = float(score_answers(full_model_answer_logits(model, batches.edit), batches.edit)
                .token_accuracy.mean())
    gen = None
    if batches.rephrase is not None:
        gen = float(score_answers(full_model_answer_logits(model, batches.rephrase), batches.rephrase)
                    .token_accuracy.mean())
    loc = None
    if batches.locality is not None and pre_locality is not None:
        post = full_model_answer_logits(model, batches.locality).argmax(-1)
        loc = float(agreement(pre_locality, post, batches.locality).mean())
    return CaseScores(rel, gen, loc)


def mean_scores(scores: Sequence[CaseScores]) -> dict:
    """Mean reliability, generalization and locality over cases (None where none was scored)."""
    def mean(values):
        value = mean_known(values)
        return round(value, 4) if value is not None else None

    return {"reliability": mean(s.reliability for s in scores),
            "generalization": mean(s.generalization for s in scores),
            "locality": mean(s.locality for s in scores), "n": len(scores)}
