"""Lean greedy decoding: the model called step by step on its KV cache, without ``generate()``.

:func:`greedy_new_tokens` returns what ``model.generate(do_sample=False, num_beams=1)`` returns
after the prompt, token for token: the same forward calls (prompt once, then one token a step
with the cache, ``logits_to_keep=1``, position ids from the attention mask, the mask dropped when
nothing is padded, as ``generate`` does), argmax of the float32 logits, ``pad_token_id`` after a
row's end token, a stop when every row has ended. What it leaves out is ``generate``'s per-step
machinery (input preparation, logits processors, stopping criteria objects, output classes).
Forward hooks (the edits of :mod:`~instructedit.editing.patches`) run as in any forward.

With ``packed_4bit`` (a CPU 4-bit backbone loaded with ``fast_4bit``: the studio's default) the
decoder also turns on :mod:`.packed4bit`'s no-grad route through the 4-bit layers (the same
weights through a faster kernel: float32 sums in another order with the fused AVX2 kernel, bf16
rounding with bitsandbytes' packed one, so 4-bit texts may differ from ``generate``'s in rare
near-ties, as they differ between bitsandbytes' own routes).
Evaluation and the command line keep the default route unless asked (their reported numbers
stay reproducible).

With ``row_done`` (a test on a row's new tokens, e.g. "its first sentence has ended",
:func:`.generation.generate`'s ``first_sentence``) a row also stops when the test says so, and
finished rows are dropped from the batch (their KV cache rows, mask and positions) so later steps
cost only the rows still running. Per-row edits read which original rows are left from
:func:`live_rows`. Dropping rows changes the batch size, so within the tolerance that batching
states (:mod:`instructedit.serving.batcher`, rule 4), not bitwise.

Models whose generation config asks for anything beyond plain greedy decoding (repetition
penalty, forced or suppressed tokens, ...) and encoder-decoder models go through ``generate``.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
from collections.abc import Callable

import torch
from torch import nn

from . import packed4bit
from .adapters import contiguous_head_input

log = logging.getLogger(__name__)

__all__ = ["supports_lean_decoding", "greedy_new_tokens", "eos_ids", "live_rows"]

RowDone = Callable[[int, list[int]], bool]
"""``row_done(row, new_tokens)``: whether original row ``row`` stops after these new tokens."""

_LIVE_ROWS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "instructedit_live_rows", default=None)


def live_rows() -> torch.Tensor | None:
    """The original batch rows (indices, ascending) still being decoded when the decoder has
    dropped finished rows (module doc); None while the batch is whole."""
    return _LIVE_ROWS.get()

# generation-config fields that do not change plain greedy decoding (sampling settings are
# ignored because decoding is greedy; lengths are set per call)
_NEUTRAL_FIELDS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache",
    "_from_model_config", "transformers_version", "output_attentions", "output_hidden_states",
    "output_scores", "output_logits", "return_dict_in_generate", "max_length", "max_new_tokens",
    "do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "num_beams",
    "num_return_sequences", "cache_implementation", "trust_remote_code"})


def _forward_parameters(model: nn.Module) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _cache_argument(params: frozenset[str]) -> str | None:
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def supports_lean_decoding(model: nn.Module) -> bool:
    """Whether :func:`greedy_new_tokens` reproduces ``generate`` for ``model`` (else it calls it)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    params = _forward_parameters(model)
    if not {"input_ids", "attention_mask", "position_ids", "use_cache", "logits_to_keep"} <= params:
        return False
    if _cache_argument(params) is None:
        return False
    generation_config = getattr(model, "generation_config", None)
    if generation_config is None:
        return True
    try:
        extra = set(generation_config.to_diff_dict()) - _NEUTRAL_FIELDS
    except Exception:  # noqa: BLE001 - an unusual config: let generate handle it
        return False
    if extra:
        log.debug("generation config sets %s: decoding through generate()", sorted(extra))
        return False
    return getattr(generation_config, "num_beams", 1) in (1, None)


def eos_ids(model: nn.Module) -> list[int]:
    """The end tokens ``generate`` stops at: the generation config's (one id or several)."""
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def _new_cache(model: nn.Module):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _hf_greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               max_new_tokens: int, pad_token_id: int | None, min_new_tokens: int) -> torch.Tensor:
    extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=pad_token_id, temperature=None, top_p=None, top_k=None, **extra)
    return out[:, input_ids.shape[1]:]


@torch.no_grad()
def greedy_new_tokens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      max_new_tokens: int, pad_token_id: int | None, *, min_new_tokens: int = 0,
                      lean: bool = True, packed_4bit: bool = False,
                      row_done: RowDone | None = None) -> torch.Tensor:
    """Greedy continuation tokens of a (left-padded) batch: (rows, steps), as ``generate`` gives.

    Args:
        input_ids, attention_mask: (rows, width), padding on the left (mask 0 there).
        max_new_tokens: steps at most; fewer when every row has produced an end token.
        pad_token_id: what a row gets after its end token (``generate``'s ``pad_token_id``).
        min_new_tokens: end tokens are suppressed before this many new tokens.
        lean: False runs ``model.generate`` (the reference path).
        packed_4bit: on a CPU, run 4-bit layers through the fast no-grad route of :mod:`.packed4bit`.
        row_done: a row also stops when this says so, and stopped rows leave the batch (module
            doc); the reference path (``lean=False``) ignores it (callers cut the text).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not lean or not supports_lean_decoding(model):
        return _hf_greedy(model, input_ids, attention_mask, max_new_tokens, pad_token_id, min_new_tokens)
    contiguous_head_input(model)
    route = contextlib.nullcontext()
    if packed_4bit and input_ids.device.type == "cpu":
        packed4bit.enable(model)
        route = packed4bit.decode_route()
    with route:
        if row_done is not None:
            return _pruning_greedy(model, input_ids, attention_mask, max_new_tokens, pad_token_id,
                                   min_new_tokens, row_done)
        return _lean_greedy(model, input_ids, attention_mask, max_new_tokens, pad_token_id,
                            min_new_tokens)


def _start(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None):
    """What both loops start from: the pad id (the first end token when None), the end tokens,
    the cache argument's name, position ids, the mask and a new cache."""
    eos = eos_ids(model)
    if pad_token_id is None and eos:
        pad_token_id = eos[0]
    eos_tensor = torch.tensor(eos, dtype=torch.long, device=input_ids.device) if eos else None
    cache_arg = _cache_argument(_forward_parameters(model))
    # as generate: positions count the unpadded tokens; an all-ones mask is dropped
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids = position_ids.masked_fill(attention_mask == 0, 0)
    mask = None if bool((attention_mask == 1).all()) else attention_mask
    return pad_token_id, eos_tensor, cache_arg, position_ids, mask, _new_cache(model)


def _lean_greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 max_new_tokens: int, pad_token_id: int | None, min_new_tokens: int) -> torch.Tensor:
    rows = input_ids.shape[0]
    if max_new_tokens <= 0:
        return input_ids.new_empty((rows, 0))
    pad_token_id, eos_tensor, cache_arg, position_ids, mask, cache = _start(model, input_ids, attention_mask,
                                                                          pad_token_id)
    step_input = input_ids
    step_positions = position_ids
    unfinished = torch.ones(rows, dtype=torch.bool, device=input_ids.device)
    new_tokens: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        outputs = model(input_ids=step_input, attention_mask=mask, position_ids=step_positions,
                        use_cache=True, logits_to_keep=1, return_dict=True, **{cache_arg: cache})
        logits = outputs.logits[:, -1].to(dtype=torch.float32)
        if eos_tensor is not None and step < min_new_tokens:
            logits[:, eos_tensor] = float("-inf")
        token = logits.argmax(dim=-1)
        if eos_tensor is not None:
            if pad_token_id is not None:
                token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
            unfinished &= ~torch.isin(token, eos_tensor)
        new_tokens.append(token)
        if eos_tensor is not None and not bool(unfinished.any()):
            break
        if step + 1 == max_new_tokens:
            break
        step_input = token[:, None]
        step_positions = step_positions[:, -1:] + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=-1)
        del outputs
    return torch.stack(new_tokens, dim=1)



def _pruning_greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    max_new_tokens: int, pad_token_id: int | None, min_new_tokens: int,
                    row_done: RowDone) -> torch.Tensor:
    """:func:`_lean_greedy` where a row also stops when ``row_done`` says so, and stopped rows
    (by it or by an end token) leave the batch."""
    rows = input_ids.shape[0]
    if max_new_tokens <= 0:
        return input_ids.new_empty((rows, 0))
    pad_token_id, eos_tensor, cache_arg, position_ids, mask, cache = _start(model, input_ids, attention_mask,
                                                                          pad_token_id)
    fill = pad_token_id if pad_token_id is not None else 0
    out = torch.full((rows, max_new_tokens), fill, dtype=torch.long, device=input_ids.device)
    step_input, step_positions = input_ids, position_ids
    alive = torch.arange(rows, device=input_ids.device)
    history: list[list[int]] = [[] for _ in range(rows)]
    steps = 0
    for step in range(max_new_tokens):
        token_var = _LIVE_ROWS.set(None if len(alive) == rows else alive)
        try:
            outputs = model(input_ids=step_input, attention_mask=mask, position_ids=step_positions,
                            use_cache=True, logits_to_keep=1, return_dict=True, **{cache_arg: cache})
        finally:
            _LIVE_ROWS.reset(token_var)
        logits = outputs.logits[:, -1].to(dtype=torch.float32)
        del outputs
        if eos_tensor is not None and step < min_new_tokens:
            logits[:, eos_tensor] = float("-inf")
        token = logits.argmax(dim=-1)
        out[alive, step] = token
        steps = step + 1
        ended = torch.isin(token, eos_tensor) if eos_tensor is not None else torch.zeros_like(token, dtype=torch.bool)
        keep = []
        for i, (row, tok) in enumerate(zip(alive.tolist(), token.tolist(), strict=True)):
            history[row].append(tok)
            if not bool(ended[i]) and not row_done(row, history[row]):
                keep.append(i)
        if not keep or step + 1 == max_new_tokens:
            break
        step_input = token[:, None]
        step_positions = step_positions[:, -1:] + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=-1)
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=input_ids.device)
            alive, step_input, step_positions = alive[index], step_input[index], step_positions[index]
            if mask is not None:
                mask = mask[index]
            cache.batch_select_indices(index)
    return out[:, :steps]
