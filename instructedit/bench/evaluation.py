"""Section 6: evaluation throughput, records/s of editing + scoring.

Two loops over the same records: the project's evaluator (:func:`instructedit.evaluate.evaluate`,
batched: each batch of records edited in one pass, each record with its own patch), timed per
batch; and a sequential loop (one edit, then its scoring, per record, as an interactive user
would) with the bench's scoring functions (:mod:`.workload`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

from ..data.records import EditRecord
from ..editing.editor import Editor
from ..editing.patches import PatchEngine
from ..evaluate.runner import EvalConfig, evaluate
from .stats import summarize
from .workload import (
    BENCH_INSTRUCTION,
    case_batches,
    edit_request,
    editor_case,
    locality_argmax,
    mean_scores,
    score_case,
)


def sequential_loop(editor: Editor, records: Sequence[EditRecord]) -> dict:
    """Edit and score each record in turn (pre-edit locality predictions included)."""
    backbone = editor.backbone
    per_record, scores = [], []
    for record in records:
        start = time.perf_counter()
        batches = case_batches(backbone.tokenizer, editor_case(record, editor.use_instructions),
                               backbone.device)
        pre = locality_argmax(backbone.model, batches)
        edit = editor.edit(edit_request(record))
        with PatchEngine.activate(edit.patch):
            scores.append(score_case(backbone.model, batches, pre))
        per_record.append(time.perf_counter() - start)
    return {"implementation": "bench sequential loop (instructedit.bench.workload)",
            "records": len(records), "records_per_s": round(len(records) / sum(per_record), 4),
            "records_per_s_per_record": summarize(per_record).inverse().to_dict(),
            "scores": mean_scores(scores)}


def evaluator_loop(editor: Editor, records: Sequence[EditRecord], batch_size: int) -> dict:
    """The project's evaluator on batches of ``batch_size`` records."""
    config = EvalConfig(instruction=BENCH_INSTRUCTION, batch_size=batch_size, sentiment=False,
                        progress=False)
    per_batch, results = [], []
    for i in range(0, len(records), batch_size):
        chunk = list(records[i: i + batch_size])
        start = time.perf_counter()
        result = evaluate(editor.backbone, editor, chunk, config, desc="bench")
        per_batch.append((len(chunk), time.perf_counter() - start))
        results.extend(result.records)
    n = sum(k for k, _ in per_batch)

    def mean(name):
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        return round(sum(values) / len(values), 4) if values else None

    return {"implementation": f"instructedit.evaluate.evaluate (batch size {batch_size})",
            "records": n, "batch_size": batch_size,
            "records_per_s": round(n / sum(s for _, s in per_batch), 4),
            "records_per_s_per_batch": summarize([k / s for k, s in per_batch]).to_dict(),
            "scores": {"reliability": mean("reliability"), "generalization": mean("generalization"),
                       "locality": mean("locality"), "n": n}}


def measure_evaluation(editor: Editor, records: Sequence[EditRecord], batch_size: int = 8) -> dict:
    """Records/s of the evaluator (if present) and of the sequential loop on ``records``."""
    evaluator = evaluator_loop(editor, records, batch_size)
    sequential = sequential_loop(editor, records)
    primary = evaluator
    return {"quantization": editor.backbone.config.quant, "records": len(records),
            "records_per_s": primary["records_per_s"], "implementation": primary["implementation"],
            "evaluator": evaluator, "sequential": sequential}
