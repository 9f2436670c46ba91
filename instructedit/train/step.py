"""One meta-training (or validation) step on a batch of examples, each edited independently.

Pass 1 (no patch): the edit rows give the edit gradients (u, d); the editor turns them into one
patch per example. Pass 2 (no patch, no gradient): the held texts (locality, neighbour,
continuation) give their pre-edit logits. Pass 3 (each row with its own example's patch): edit,
outer and plain rows give the post-edit NLL, the held texts the KL. Every pass runs its rows
grouped by length, so a short text is not padded to an instruction-wrapped one's width.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..editing.editor import EditInputs, patch_from_inputs, tokenize_edit_inputs
from ..editing.mend import MendNetwork
from ..editing.patches import PatchEngine
from ..scoring import (
    AnswerBatch,
    agreement,
    answer_batch_from_ids,
    answer_logits_from_hidden,
    concat_batches,
    every_position,
    kl_per_row,
    length_buckets,
    run_in_groups,
    score_answers,
    tokenize_answers,
)
from .examples import TrainingExample

HiddenFn = Callable[[AnswerBatch], torch.Tensor]


@dataclass(frozen=True)
class LossWeights:
    """Outer-loss weights: ``c_edit * NLL(edit, outer, plain) + c_loc * KL(locality, neighbour)``.

    ``plain``: also score the edit on the plain (unwrapped) prompt or rephrase.
    ``neighbour``: also hold a same-template neighbour still (hard negative).
    ``all_positions``: the KL covers every position of the locality texts, not only the answer.
    ``continuation``: also hold still the model's own continuation after "typed prompt + target"
    (KL on those tokens; against an edit that makes the text loop on its target).
    ``continuation_neighbours``: the same after each neighbour's "prompt + true answer".
    """

    c_edit: float = 1.0
    c_loc: float = 1.0
    plain: bool = False
    neighbour: bool = False
    all_positions: bool = False
    continuation: bool = False
    continuation_neighbours: bool = False


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
    plain: torch.Tensor | None = None      # (B,) token accuracy on the plain input
    neighbour: torch.Tensor | None = None  # (B,) pre/post agreement on the neighbour's answer
    continuation: torch.Tensor | None = None  # (B,) pre/post agreement after "prompt + target"
    neighbour_continuation: torch.Tensor | None = None  # (B,) the same after the neighbour's answer


@dataclass
class ExampleBatches:
    """The tokenized texts of a batch of examples (``plain``/``neighbour``/``continuation`` only
    when used).

    ``sources``: what the edits are computed from (``sources.wrapped`` is ``edit``)."""

    sources: EditInputs
    outer: AnswerBatch
    locality: AnswerBatch
    plain: AnswerBatch | None = None
    neighbour: AnswerBatch | None = None
    continuation: AnswerBatch | None = None

    @property
    def edit(self) -> AnswerBatch:
        return self.sources.wrapped

    def to(self, device) -> ExampleBatches:
        def move(b):
            return None if b is None else b.to(device)
        return ExampleBatches(self.sources.to(device), self.outer.to(device),
                              self.locality.to(device), move(self.plain), move(self.neighbour),
                              move(self.continuation))


def tokenize_examples(tokenizer, network: MendNetwork, examples: Sequence[TrainingExample],
                      max_answer_tokens: int = 32, weights: LossWeights | None = None,
                      ) -> ExampleBatches:
    """The answer batches of ``examples``; the edits' sources follow ``network``'s settings."""
    weights = weights or LossWeights()

    def tok(prompts, answers):
        return tokenize_answers(tokenizer, prompts, answers, max_answer_tokens)

    sources = tokenize_edit_inputs(tokenizer, network, [e.edit_prompt for e in examples],
                                   [e.typed_prompt or e.edit_prompt for e in examples],
                                   [e.target for e in examples], [e.subject for e in examples],
                                   max_answer_tokens)
    outer = tok([e.outer_prompt for e in examples], [e.outer_target for e in examples])
    loc = tok([e.locality_prompt for e in examples], [e.locality_answer for e in examples])
    plain = neighbour = None
    if weights.plain:
        plain = tok([e.plain_prompt or e.edit_prompt for e in examples],
                    [e.target if e.task != "convsent" else e.outer_target for e in examples])
    if weights.neighbour:
        neighbour = tok([e.neighbour_prompt or e.locality_prompt for e in examples],
                        [e.neighbour_answer or e.locality_answer for e in examples])
    continuation = None
    if weights.continuation:
        if any(not e.continuation for e in examples):
            raise ValueError("the continuation KL needs every example's continuation filled in")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        prefixes, tokens = [e.continuation_prefix for e in examples], [e.continuation for e in examples]
        if weights.continuation_neighbours:
            if any(not e.neighbour_continuation for e in examples):
                raise ValueError("the neighbours' continuation KL needs their continuations filled in")
            prefixes += [e.neighbour_prefix for e in examples]
            tokens += [e.neighbour_continuation for e in examples]
        continuation = answer_batch_from_ids([tokenizer(p)["input_ids"] for p in prefixes], tokens, pad)
    return ExampleBatches(sources, outer, loc, plain, neighbour, continuation)


@dataclass
class StepParts:
    """The texts a step runs after its edit gradients: ``held`` (the locality and neighbour texts,
    ``scored_loc`` when every position is scored, then the continuations) before and after the
    edit, ``edited`` (edit input, rephrase, plain input) after it."""

    loc: AnswerBatch
    scored_loc: AnswerBatch
    is_answer: torch.Tensor | None
    held: list[AnswerBatch]
    edited: list[AnswerBatch]


def step_parts(batches: ExampleBatches, weights: LossWeights, pad_id: int = 0) -> StepParts:
    """What each pass of :func:`meta_step` runs besides the edit gradients' pass."""
    loc_parts = [batches.locality] + ([batches.neighbour] if batches.neighbour is not None else [])
    loc = concat_batches(*loc_parts, pad_id=pad_id)
    scored_loc, is_answer = every_position(loc) if weights.all_positions else (loc, None)
    held = [scored_loc] + ([batches.continuation] if batches.continuation is not None else [])
    edited = [batches.edit, batches.outer] + ([batches.plain] if batches.plain is not None else [])
    return StepParts(loc, scored_loc, is_answer, held, edited)


def _logits_of_parts(head_model, final_hidden: HiddenFn, parts: Sequence[AnswerBatch], pad_id: int,
                     patch=None, n_examples: int = 0, by_length: bool = True) -> list[torch.Tensor]:
    """Answer logits of ``parts``, split back per part, from forwards over their rows stacked and
    grouped by length (:func:`length_buckets`: little padding; ``by_length=False``: one forward
    per part). With ``patch``, every row carries its own example's patch (each part's rows are
    the examples in order, repeated)."""
    batch = concat_batches(*parts, pad_id=pad_id)
    example_of_row = torch.arange(batch.size, device=batch.input_ids.device) % max(n_examples, 1)
    if by_length:
        groups = length_buckets(batch.attention_mask.sum(1).tolist())
    else:
        ends = torch.tensor([part.size for part in parts]).cumsum(0).tolist()
        groups = [list(range(end - part.size, end)) for part, end in zip(parts, ends, strict=True)]

    def run(sub: AnswerBatch, rows: list[int]) -> torch.Tensor:
        if patch is None:
            return answer_logits_from_hidden(head_model, final_hidden(sub), sub)
        with PatchEngine.activate(patch.select_rows(example_of_row[rows])):
            return answer_logits_from_hidden(head_model, final_hidden(sub), sub)

    logits = run_in_groups(batch, groups, run)
    return list(logits.split([part.answer_tokens.numel() for part in parts]))


def meta_step(network: MendNetwork, module_names: Sequence[str], head_model, final_hidden: HiddenFn,
              examples: Sequence[TrainingExample], tokenizer, weights: LossWeights,
              pad_id: int = 0, batches: ExampleBatches | None = None, by_length: bool = True,
              ) -> StepResult:
    """Edit every example independently and compute the outer loss and metrics.

    Three passes: the edit gradients (no patch), the held texts before the edit (no gradient),
    and every text after the edit, each with its rows grouped by length (``by_length``; else one
    forward per kind of text: the same numbers, more padding)."""
    n = len(examples)
    device = next(head_model.parameters()).device
    batches = (batches or tokenize_examples(tokenizer, network, examples, weights=weights)).to(device)
    patch, _ = patch_from_inputs(network, module_names, batches.sources, final_hidden, head_model,
                                 pad_id=pad_id, by_length=by_length)
    parts = step_parts(batches, weights, pad_id)
    loc, scored_loc, is_answer, held, edited = (parts.loc, parts.scored_loc, parts.is_answer,
                                                parts.held, parts.edited)
    with torch.no_grad():
        pre_held = _logits_of_parts(head_model, final_hidden, held, pad_id, by_length=by_length)
    post = _logits_of_parts(head_model, final_hidden, edited + held, pad_id, patch, n, by_length)
    post_held = post[len(edited):]
    scored = list(zip(edited, post[:len(edited)], strict=True))
    per_part = [score_answers(logits, part) for part, logits in scored]
    nll = torch.cat([s.mean_nll for s in per_part])
    accuracy = torch.cat([s.token_accuracy.detach() for s in per_part])
    kl = kl_per_row(pre_held[0], post_held[0], scored_loc)
    loss = weights.c_edit * nll.mean() + weights.c_loc * kl.mean()
    continuation_agree = None
    if batches.continuation is not None:
        cont, pre_cont, post_cont = batches.continuation, pre_held[1], post_held[1]
        loss = loss + weights.c_loc * kl_per_row(pre_cont, post_cont, cont).mean()
        continuation_agree = agreement(pre_cont.argmax(-1), post_cont.argmax(-1), cont).detach()
    pre_loc_logits, loc_post_logits = pre_held[0], post_held[0]
    if is_answer is not None:
        pre_loc_logits, loc_post_logits = pre_loc_logits[is_answer], loc_post_logits[is_answer]
    agree = agreement(pre_loc_logits.argmax(-1), loc_post_logits.argmax(-1), loc).detach()
    return StepResult(loss, float(nll.detach().mean()), float(kl.detach().mean()),
                      accuracy[:n], accuracy[n: 2 * n], agree[:n], [e.task for e in examples],
                      plain=accuracy[2 * n: 3 * n] if batches.plain is not None else None,
                      neighbour=agree[n: 2 * n] if batches.neighbour is not None else None,
                      continuation=None if continuation_agree is None else continuation_agree[:n],
                      neighbour_continuation=(continuation_agree[n:] if continuation_agree is not None
                                              and continuation_agree.numel() > n else None))
