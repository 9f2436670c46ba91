"""Section 1: edit latency against its floor, one forward + backward of the same tokens.

The floor runs the instruction-wrapped edit input + target (already tokenized) through the whole
model with gradients only to the edited modules' outputs, exactly as an edit needs them
(:meth:`PatchEngine.capture`), and stops. An edit adds validation, tokenization, the editor
network and building the patch. Edits and floors alternate so that drift hits both alike.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..editing.editor import MAX_TARGET_TOKENS, Edit, Editor, EditRequest
from ..editing.patches import PatchEngine
from ..scoring import AnswerBatch, answer_logits_from_hidden, score_answers, tokenize_answers
from .profiling import top_ops
from .stats import Summary, ratio, summarize

log = logging.getLogger(__name__)


def edit_batch(editor: Editor, request: EditRequest) -> AnswerBatch:
    """The tokens an edit of ``request`` runs (wrapped input + target)."""
    return tokenize_answers(editor.backbone.tokenizer, [request.edit_input(editor.use_instructions)],
                            [request.target], max_answer_tokens=MAX_TARGET_TOKENS
                            ).to(editor.backbone.device)


def floor_pass(editor: Editor, batch: AnswerBatch) -> None:
    """One forward + backward with gradients only at the edited modules' outputs."""
    model = editor.backbone.model
    with torch.enable_grad(), PatchEngine.capture(editor.module_names) as capture:
        hidden = model.base_model(input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask).last_hidden_state
        logits = answer_logits_from_hidden(model, hidden, batch)
        capture.output_gradients(score_answers(logits, batch).mean_nll.sum())


@dataclass
class LatencyRun:
    """The edits made (in request order) and the measurements."""

    edits: list[Edit]
    result: dict


def measure_edit_latency(editor: Editor, requests: Sequence[EditRequest], timed_count: int,
                         warmup: int = 2, goal: float = 1.5, profile_top: int = 8) -> LatencyRun:
    """Edit every request (the first ``timed_count`` timed against their floor).

    Returns all edits (for the generation and memory sections) and
    ``{"edit_ms", "floor_ms", "ratio", "tokens", "goal", "met", "profile"?}``.
    """
    for request in requests[:warmup]:
        floor_pass(editor, edit_batch(editor, request))
        editor.edit(request)
    edits: list[Edit] = []
    edit_s, floor_s, tokens = [], [], []
    for i, request in enumerate(requests):
        if i >= timed_count:
            edits.append(editor.edit(request))
            continue
        batch = edit_batch(editor, request)
        tokens.append(int(batch.attention_mask.sum()))
        start = time.perf_counter()
        floor_pass(editor, batch)
        floor_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        edits.append(editor.edit(request))
        edit_s.append(time.perf_counter() - start)
    edit_ms: Summary = summarize(edit_s).scaled(1000)
    floor_ms: Summary = summarize(floor_s).scaled(1000)
    value = ratio(edit_ms.median, floor_ms.median)
    result = {"edit_ms": edit_ms.to_dict(), "floor_ms": floor_ms.to_dict(),
              "ratio": round(value, 4), "tokens": summarize(tokens).to_dict(),
              "goal": goal, "met": value <= goal}
    if value > goal:
        log.info("edit latency ratio %.2f > %.2f: profiling one edit", value, goal)
        result["profile"] = {"edit": top_ops(lambda: editor.edit(requests[0]), profile_top),
                             "floor": top_ops(lambda: floor_pass(editor, edit_batch(editor, requests[0])),
                                              profile_top)}
    return LatencyRun(edits, result)
