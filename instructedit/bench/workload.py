"""The edits a benchmark makes (CounterFact test records) and the evaluator settings the bench
measures them with.

Every section that scores edits (3's compression study, 4's fine-tuning comparison, 6's
evaluation throughput) scores them as ``eval`` does: by the evaluator
(:class:`instructedit.evaluate.runner.Evaluator`), whose per-record
:class:`~instructedit.evaluate.metrics.RecordResult` and
:class:`~instructedit.evaluate.metrics.EvalSummary` come from :mod:`instructedit.scoring`.
"""
from __future__ import annotations

from ..data.records import EditRecord
from ..data.tasks import load_split
from ..editing.editor import EditRequest
from ..evaluate.metrics import EvalSummary
from ..evaluate.runner import EvalConfig

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


def eval_config(batch_size: int) -> EvalConfig:
    """The evaluator's settings in the bench: ``eval``'s paper protocol (reliability,
    generalization, locality) with the bench's instruction, ``batch_size`` records per pass."""
    return EvalConfig(instruction=BENCH_INSTRUCTION, batch_size=batch_size, sentiment=False,
                      plain=False, progress=False)


def summary_scores(summary: EvalSummary) -> dict:
    """Mean reliability, generalization and locality of an evaluator summary, rounded (``None``:
    no record had that score), and the number of records."""
    def mean(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {"reliability": mean(summary.reliability), "generalization": mean(summary.generalization),
            "locality": mean(summary.locality), "n": summary.n}
