"""The one scoring function: teacher-forced answer metrics, shared by app, eval, training and bench.

Prompts and answers are tokenized separately (answer with a leading space, no special tokens), so
labels never include a BOS token and answer positions are exact. Logits are computed only at the
positions that predict answer tokens.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AnswerBatch:
    """Right-padded prompt+answer sequences and where their answer tokens are.

    ``rows``/``positions`` index the logits that predict each answer token (``answer_tokens``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    answer_tokens: torch.Tensor
    prompt_lengths: list[int]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device) -> AnswerBatch:
        return AnswerBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.rows.to(device), self.positions.to(device),
                           self.answer_tokens.to(device), self.prompt_lengths)

    def select_rows(self, rows: Sequence[int]) -> tuple[AnswerBatch, torch.Tensor]:
        """The batch of ``rows`` only (in that order, cut to their longest length) and the
        indices of its answer entries in this batch's entries."""
        rows_t = torch.as_tensor(list(rows), dtype=torch.long, device=self.input_ids.device)
        width = int(self.attention_mask[rows_t].sum(1).max())
        new_index = torch.full((self.size,), -1, dtype=torch.long, device=self.input_ids.device)
        new_index[rows_t] = torch.arange(len(rows_t), device=self.input_ids.device)
        entries = (new_index[self.rows] >= 0).nonzero().squeeze(1)
        # entries keep this batch's order; sort them by their new row (stable) to follow ``rows``
        order = torch.sort(new_index[self.rows[entries]], stable=True).indices
        entries = entries[order]
        return AnswerBatch(self.input_ids[rows_t, :width], self.attention_mask[rows_t, :width],
                           new_index[self.rows[entries]], self.positions[entries],
                           self.answer_tokens[entries], [self.prompt_lengths[r] for r in rows]), entries


def concat_batches(*batches: AnswerBatch, pad_id: int = 0) -> AnswerBatch:
    """Stack answer batches row-wise (right-padded to a common width)."""
    width = max(b.input_ids.shape[1] for b in batches)
    ids, masks, rows, positions, tokens, lengths = [], [], [], [], [], []
    offset = 0
    for b in batches:
        extra = width - b.input_ids.shape[1]
        ids.append(F.pad(b.input_ids, (0, extra), value=pad_id))
        masks.append(F.pad(b.attention_mask, (0, extra), value=0))
        rows.append(b.rows + offset)
        positions.append(b.positions)
        tokens.append(b.answer_tokens)
        lengths.extend(b.prompt_lengths)
        offset += b.size
    return AnswerBatch(torch.cat(ids), torch.cat(masks), torch.cat(rows), torch.cat(positions),
                       torch.cat(tokens), lengths)


def length_buckets(lengths: Sequence[int], min_fill: float = 0.75) -> list[list[int]]:
    """Rows grouped by length, longest first, so that right-padding a group to its longest row
    keeps every row at least ``min_fill`` of that width (on a CPU a forward costs what its padded
    tokens cost)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] >= min_fill * lengths[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def run_in_groups(batch: AnswerBatch, groups: Sequence[Sequence[int]],
                  run: Callable[[AnswerBatch, list[int]], torch.Tensor]) -> torch.Tensor:
    """``run(sub_batch, rows)`` on each group of ``batch``'s rows (each cut to its own width), its
    per-answer-entry outputs put back in ``batch``'s entry order. One group of every row in order
    runs ``batch`` itself."""
    if len(groups) == 1 and list(groups[0]) == list(range(batch.size)):
        return run(batch, list(groups[0]))
    pieces, entries = [], []
    for rows in groups:
        sub, picked = batch.select_rows(rows)
        pieces.append(run(sub, list(rows)))
        entries.append(picked)
    return torch.cat(pieces)[torch.argsort(torch.cat(entries))]


def every_position(batch: AnswerBatch) -> tuple[AnswerBatch, torch.Tensor]:
    """The same sequences scored at every next-token position (not only the answer's).

    Returns the widened batch and a bool mask over its entries marking the original answer
    positions (so answer-only metrics can still be read off the widened logits).
    """
    rows, positions = [], []
    lengths = batch.attention_mask.sum(1).tolist()
    for row, n in enumerate(lengths):
        rows.extend([row] * (n - 1))
        positions.extend(range(n - 1))
    rows_t = torch.tensor(rows, dtype=torch.long, device=batch.input_ids.device)
    pos_t = torch.tensor(positions, dtype=torch.long, device=batch.input_ids.device)
    tokens = batch.input_ids[rows_t, pos_t + 1]
    prompt_len = torch.tensor(batch.prompt_lengths, device=batch.input_ids.device)[rows_t]
    is_answer = pos_t >= prompt_len - 1
    return AnswerBatch(batch.input_ids, batch.attention_mask, rows_t, pos_t, tokens,
                       batch.prompt_lengths), is_answer


def answer_text(answer: str) -> str:
    """The answer as it is appended to its prompt (one leading space)."""
    return " " + answer.strip()


def tokenize_answers(tokenizer, prompts: Sequence[str], answers: Sequence[str],
                     max_answer_tokens: int | None = None) -> AnswerBatch:
    """Tokenize ``prompt + " " + answer`` pairs, right-padded, with answer positions."""
    if len(prompts) != len(answers) or not prompts:
        raise ValueError("need the same non-zero number of prompts and answers")
    prompt_rows = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    answer_rows = [tokenizer(answer_text(answer), add_special_tokens=False)["input_ids"]
                   for answer in answers]
    if max_answer_tokens is not None:
        answer_rows = [a[:max_answer_tokens] for a in answer_rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return answer_batch_from_ids(prompt_rows, answer_rows, pad)


def answer_batch_from_ids(prompt_rows: Sequence[Sequence[int]], answer_rows: Sequence[Sequence[int]],
                          pad_id: int = 0) -> AnswerBatch:
    """An :class:`AnswerBatch` from token ids already split into prompt and answer."""
    if len(prompt_rows) != len(answer_rows) or not prompt_rows:
        raise ValueError("need the same non-zero number of prompts and answers")
    sequences, lengths, rows, positions, tokens = [], [], [], [], []
    for row, (p_ids, a_ids) in enumerate(zip(prompt_rows, answer_rows, strict=True)):
        p_ids, a_ids = list(p_ids), list(a_ids)
        if not p_ids or not a_ids:
            raise ValueError(f"empty prompt or answer after tokenization (row {row})")
        sequences.append(p_ids + a_ids)
        lengths.append(len(p_ids))
        for k, tok in enumerate(a_ids):
            rows.append(row)
            positions.append(len(p_ids) + k - 1)
            tokens.append(tok)
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return AnswerBatch(input_ids, mask, torch.tensor(rows), torch.tensor(positions),
                       torch.tensor(tokens), lengths)


def answer_logits_from_hidden(model: nn.Module, hidden: torch.Tensor, batch: AnswerBatch) -> torch.Tensor:
    """Logits (N, V) at the answer positions, from final (normalised) hidden states."""
    picked = hidden[batch.rows, batch.positions]
    return model.get_output_embeddings()(picked).float()


def full_model_answer_logits(model: nn.Module, batch: AnswerBatch) -> torch.Tensor:
    """Run the whole model and return logits (N, V) at the answer positions."""
    out = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return answer_logits_from_hidden(model, out.last_hidden_state, batch)


@dataclass
class AnswerScores:
    """Per-row teacher-forced metrics of a batch of answers."""

    token_accuracy: torch.Tensor  # (B,) share of answer tokens that are the argmax
    log_prob: torch.Tensor        # (B,) sum of answer-token log-probabilities
    mean_nll: torch.Tensor        # (B,) mean negative log-likelihood per answer token
    argmax: torch.Tensor          # (N,) argmax token at each answer position

    @property
    def probability(self) -> torch.Tensor:
        return self.log_prob.exp()


def _row_mean(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    total = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    count = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(
        0, rows, torch.ones_like(values))
    return total / count.clamp_min(1)


def score_answers(logits: torch.Tensor, batch: AnswerBatch) -> AnswerScores:
    """Teacher-forced token accuracy, answer log-probability and NLL per row."""
    logp = F.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(1, batch.answer_tokens.unsqueeze(1)).squeeze(1)
    argmax = logits.argmax(-1)
    correct = (argmax == batch.answer_tokens).float()
    n = batch.size
    log_prob = torch.zeros(n, device=logits.device).index_add(0, batch.rows, token_logp)
    return AnswerScores(_row_mean(correct, batch.rows, n), log_prob,
                        _row_mean(-token_logp, batch.rows, n), argmax)


def agreement(pre_argmax: torch.Tensor, post_argmax: torch.Tensor, batch: AnswerBatch) -> torch.Tensor:
    """Locality: per row, the share of answer positions whose argmax is unchanged."""
    return _row_mean((pre_argmax == post_argmax).float(), batch.rows, batch.size)


def kl_per_row(pre_logits: torch.Tensor, post_logits: torch.Tensor, batch: AnswerBatch) -> torch.Tensor:
    """Mean over answer positions of KL(p_pre || p_post), per row."""
    pre = F.log_softmax(pre_logits.float(), -1)
    post = F.log_softmax(post_logits.float(), -1)
    kl = (pre.exp() * (pre - post)).sum(-1)
    return _row_mean(kl, batch.rows, batch.size)


LogitsFn = Callable[[AnswerBatch], torch.Tensor]
