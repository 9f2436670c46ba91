"""Section 6: evaluation throughput, records/s of editing + scoring.

Two loops over the same records, both the evaluator of ``eval``
(:class:`instructedit.evaluate.runner.Evaluator`, its paper protocol: :func:`.workload.eval_config`)
and differing only in how many records a pass edits: batched (each pass edits its records in one
go, each record with its own patch) and sequential (one record per pass: one edit, then its
scoring, as an interactive user would). Each pass is one :meth:`Evaluator.run` on consecutive
records; its records/s comes from the evaluator's own clock (``EvalSummary.seconds``), and the
scores from the summary of all passes' :class:`~instructedit.evaluate.metrics.RecordResult`.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..data.records import EditRecord
from ..editing.editor import Editor
from ..evaluate.metrics import summarize as summarize_results
from ..evaluate.runner import Evaluator
from .stats import ratio, summarize
from .workload import eval_config, summary_scores


def evaluator_passes(editor: Editor, records: Sequence[EditRecord], batch_size: int) -> dict:
    """Records/s and scores of the evaluator on passes of ``batch_size`` consecutive records."""
    evaluator = Evaluator(editor.backbone, editor, eval_config(batch_size))
    passes = [evaluator.run(records[i: i + batch_size], desc="bench")
              for i in range(0, len(records), batch_size)]
    results = [r for p in passes for r in p.records]
    summary = summarize_results(results, sum(p.summary.seconds for p in passes))
    label = "one record per pass (sequential)" if batch_size == 1 else f"batch size {batch_size}"
    return {"implementation": f"instructedit.evaluate.runner.Evaluator ({label})",
            "records": summary.n, "batch_size": batch_size,
            "records_per_s": round(ratio(summary.n, summary.seconds), 4),
            "records_per_s_per_pass": summarize([ratio(len(p.records), p.summary.seconds)
                                                 for p in passes]).to_dict(),
            "edit_ms_per_record": (None if summary.edit_latency_ms is None
                                   else round(summary.edit_latency_ms, 2)),
            "scores": summary_scores(summary)}


def measure_evaluation(editor: Editor, records: Sequence[EditRecord], batch_size: int = 8) -> dict:
    """Records/s of the evaluator, batched (the headline) and one record per pass."""
    batched = evaluator_passes(editor, records, batch_size)
    sequential = evaluator_passes(editor, records, 1)
    return {"quantization": editor.backbone.config.quant, "records": len(records),
            "records_per_s": batched["records_per_s"], "implementation": batched["implementation"],
            "evaluator": batched, "sequential": sequential}
