"""One meta-training (or validation) step on a batch of examples, each edited independently.

Pass 1 (no patch): the edit rows give the edit gradients (u, d); the locality rows give their
pre-edit logits. The editor turns (u, d) into one patch per example. Pass 2 (each row with its
own example's patch): edit and outer rows give the post-edit NLL, locality rows the KL.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..editor import compute_batched_patch
from ..mend import MendNetwork
from ..patches import PatchEngine
from ..scoring import (
    AnswerBatch,
    agreement,
    answer_logits_from_hidden,
    concat_batches,
    kl_per_row,
    score_answers,
    tokenize_answers,
)
from .examples import TrainingExample

HiddenFn = Callable[[AnswerBatch], torch.Tensor]


@dataclass(frozen=True)
class LossWeights:
    """Outer-loss weights: ``c_edit * NLL(edit+outer) + c_loc * KL(locality)``."""

    c_edit: float = 1.0
    c_loc: float = 1.0


@dataclass
class StepResult:
    """Loss (with graph) and per-example metrics of a step."""

    loss: torch.Tensor
    edit_nll: float
    locality_kl: float
    reliability: torch.Tensor      # (B,) token accuracy on the edit input after the edit
    generalization: torch.Tensor   # (B,) token accuracy on the outer input
    locality: torch.Tensor         # (B,) pre/post argmax agreement on locality answers
    tasks: list[str]


def tokenize_examples(tokenizer, examples: Sequence[TrainingExample], max_answer_tokens: int = 32,
                      ) -> tuple[AnswerBatch, AnswerBatch, AnswerBatch]:
    """(edit, outer, locality) answer batches of ``examples``."""
    edit = tokenize_answers(tokenizer, [e.edit_prompt for e in examples], [e.target for e in examples],
                            max_answer_tokens)
    outer = tokenize_answers(tokenizer, [e.outer_prompt for e in examples],
                             [e.outer_target for e in examples], max_answer_tokens)
    loc = tokenize_answers(tokenizer, [e.locality_prompt for e in examples],
                           [e.locality_answer for e in examples], max_answer_tokens)
    return edit, outer, loc


def meta_step(network: MendNetwork, module_names: Sequence[str], head_model, final_hidden: HiddenFn,
              examples: Sequence[TrainingExample], tokenizer, weights: LossWeights,
              pad_id: int = 0, batches: tuple[AnswerBatch, AnswerBatch, AnswerBatch] | None = None,
              ) -> StepResult:
    """Edit every example independently and compute the outer loss and metrics."""
    n = len(examples)
    device = next(head_model.parameters()).device
    edit, outer, loc = (b.to(device) for b in (batches or tokenize_examples(tokenizer, examples)))
    patch, _ = compute_batched_patch(network, module_names, edit, final_hidden, head_model)
    with torch.no_grad():
        pre_loc_logits = answer_logits_from_hidden(head_model, final_hidden(loc), loc)
    # Locality rows are short and unwrapped: run them apart from the long wrapped rows (no padding waste).
    pair = concat_batches(edit, outer, pad_id=pad_id)
    rows = torch.arange(n, device=device)
    with PatchEngine.activate(patch.select_rows(torch.cat([rows, rows]))):
        pair_logits = answer_logits_from_hidden(head_model, final_hidden(pair), pair)
    with PatchEngine.activate(patch):
        loc_post_logits = answer_logits_from_hidden(head_model, final_hidden(loc), loc)
    scores = score_answers(pair_logits, pair)
    kl = kl_per_row(pre_loc_logits, loc_post_logits, loc)
    nll = scores.mean_nll
    loss = weights.c_edit * nll.mean() + weights.c_loc * kl.mean()
    locality = agreement(pre_loc_logits.argmax(-1), loc_post_logits.argmax(-1), loc)
    return StepResult(loss, float(nll.detach().mean()), float(kl.detach().mean()),
                      scores.token_accuracy[:n].detach(),
                      scores.token_accuracy[n: 2 * n].detach(), locality.detach(),
                      [e.task for e in examples])
