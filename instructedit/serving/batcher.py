"""Cross-session batching: generation calls from many threads (sessions) run as one batched
``generate`` in which each request's rows carry that request's own edits (multi-adapter serving
in the spirit of S-LoRA and Punica, for low-rank edit patches).

How it runs. :meth:`GenerationBatcher.generate` takes a request ``(patches, texts,
max_new_tokens)``. A request that can be batched joins a queue. One batch runs at a time; its
leader is the caller at the head of the queue, which waits for companions until the batch is full
(``max_rows`` rows), until every announced caller (:meth:`GenerationBatcher.client`) is waiting,
or until the window (``window_ms``, counted from its own arrival) has passed; it then runs the
head request and the queued requests that may share its batch (same group, padded widths within
``max_extra_pad`` of each other: rule 1; first come, first served) as one ``generate`` in its own
thread and hands every caller exactly its rows. A request alone (the only
announced caller) waits for nothing and runs as a batch of one, which is the direct path of the
code without a batcher: ``PatchEngine.activate(patches)`` around ``generate``. No thread of its
own: nothing to stop; :meth:`~GenerationBatcher.close` lets queued requests run at once and sends
later ones down the direct path. A request may hold several jobs (:meth:`~GenerationBatcher.generate_jobs`:
an edit request's texts before and after its edits), each with its own stack and its rows' own
stopping rule (whole continuation or first sentence); it is batched as the rows of one request.

Isolation rules (what keeps a row's output that of its request's run on its own, exactly or
within a stated tolerance):

1. Padding. Requests are grouped by (new tokens, chat template); a batch is left-padded to its
   widest prompt, and requests share a batch only when their padded widths (the token count of
   each one's longest prompt) differ by at most ``max_extra_pad`` tokens (default
   :data:`DEFAULT_MAX_EXTRA_PAD`), so no row gets more than that many padding tokens beyond its run
   alone and a short request is not slowed much by a long one. What stays exact: each row's token
   ids, its attention mask (its own, plus the extra padding masked out) and its position ids, which
   the decoders derive from the mask (``cumsum(mask) - 1``, :mod:`~instructedit.model.decoding`,
   as ``generate`` does), so a row padded more has the positions it has alone. What does not: the
   attention kernel sums over the key axis in vector lanes, and extra (masked) padding keys shift a
   row's keys across the lanes, so its sums round differently (last bits in float32, a few bf16
   roundings of a logit in bf16; measured in rule 4). ``max_extra_pad=0`` restores the exact rule:
   only requests of equal padded width, and equally padded (a request without padding alone runs
   with no attention mask), meet, and each row is padded exactly as alone.
2. Each request's edits act on its rows exactly as alone: per edited module, the request's stack
   folded as ``PatchEngine.activate`` folds it (:func:`~instructedit.editing.patches.combine_patches`)
   is applied to that request's slice of rows, a tensor of the same shape as in its own run; the
   rows of requests without a patch on the module get zeros (:class:`RequestRows`). (A stacked
   batched patch, factors zero-padded along the rank axis with the scales folded in, would
   re-associate the sums and differ in the last bits.)
3. Requests without edits never join a batch (unless ``batch_unedited``): they run on their own,
   so the unedited model's outputs (the Playground's "without", an observer session) stay bitwise
   those of a single-user run on any backend. So do requests whose stack holds batched patches or
   that have more than ``max_rows`` rows.
4. Numerics. Measured on the test suite's tiny LLaMA and GPT-2 (CPU with AVX-512, one thread,
   torch 2.13, transformers 5.24, bitsandbytes 0.50.2), every generated step's logits of a batched
   row against its request alone:

   - Equal widths (only the batch size differs): 4-bit nf4 with bf16 compute is bitwise equal,
     logits and texts; in float32 the prompt pass is bitwise equal too, but a one-row request
     decodes with a matrix-vector kernel alone and a matrix-matrix one in a batch, and its logits
     differ by up to 1.6e-6. Stated tolerance: :data:`LOGIT_TOLERANCE` (1e-5 in float32, 0 in
     bf16).
   - Mixed widths: 40 requests of 1-2 prompts of 2-50 tokens under 1-3 stacked edits, 195
     random batches of 2-6 of them whose widths differ by 1 to 32 tokens, 16 new tokens, each of
     the 841 batched rows compared with its request alone up to its first token that differs
     (about 13,400 steps per model and precision). Float32: at most 3.7e-6 (LLaMA) and 1.4e-6
     (GPT-2), the order of the batch-size effect. 4-bit nf4 / bf16 compute: at most 0.039 (LLaMA)
     and 0.016 (GPT-2) on the default 4-bit route, 0.035 and 0.018 on the packed ``fast_4bit``
     route (one to three bf16 roundings of a logit; the widest row of a batch, and rows padded
     exactly 16 or 32 tokens more, were bitwise equal, as fits the kernel's 16-float lanes).
     Stated tolerance: :data:`PADDED_LOGIT_TOLERANCE` (2e-5 in float32, 0.125 in bf16). Texts: in
     float32 every row's greedy text equals its run alone; in bf16 7 and 23 of the 841 rows
     (default route, LLaMA and GPT-2) and 24 and 32 (packed route) differ, each at a near tie: the
     run alone's two best logits were at most 0.031 apart (two bf16 steps), most exactly equal,
     and the batch broke the tie the other way. In ``tests/test_batching.py`` one row does so
     (4-bit GPT-2, "Madrid is the capital of"); the other texts are equal.

   A greedy token can change only where the run alone had its two best logits closer than twice
   the tolerance. Larger models have larger logits and longer sums, so on the real model in 4 bit
   expect edited texts batched with other widths to differ from their single-user run more often
   (an earlier batch of padded prompts flipped 9 of 16 texts, docs/reliability.md); not measured.
   Other backends (a GPU) are not measured either: batching is off in the studio unless
   ``--batch-window-ms`` asks for it.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..editing.patches import LayerPatch, Patch, PatchEngine, combine_patches
from ..model.backbone import Backbone
from ..model.decoding import live_rows
from ..model.generation import GenerationConfig, format_prompt, generate

__all__ = ["GenerationBatcher", "RequestRows", "LOGIT_TOLERANCE", "PADDED_LOGIT_TOLERANCE",
           "DEFAULT_MAX_EXTRA_PAD", "current_batcher", "request_rows_patch"]

log = logging.getLogger(__name__)

LOGIT_TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.bfloat16: 0.0}
"""Largest difference of a batched row's logits from its run alone when every request of the batch
has the same padded width, by compute dtype (module doc, rule 4)."""

PADDED_LOGIT_TOLERANCE: dict[torch.dtype, float] = {torch.float32: 2e-5, torch.bfloat16: 0.125}
"""The same for a row of a batch of mixed widths (rule 1): about 3 times the largest difference
measured in bf16 (0.039), 5 times in float32 (3.7e-6) (module doc, rule 4)."""

DEFAULT_MAX_EXTRA_PAD = 16
"""Padding tokens a row may get beyond its run alone, by default (rule 1)."""

_ALIGNMENT = 64  # bytes: torch's CPU allocator aligns fresh tensors to this

_CURRENT: contextvars.ContextVar[GenerationBatcher | None] = contextvars.ContextVar(
    "instructedit_batcher", default=None)


def current_batcher() -> GenerationBatcher | None:
    """The batcher of the current context (set by :meth:`GenerationBatcher.client`), or None."""
    return _CURRENT.get()


@dataclass(frozen=True)
class RequestRows:
    """One module's edits in a batch of requests, read by the patch hook like a
    :class:`~instructedit.editing.patches.LayerPatch` of a batched patch.

    ``segments``: ``(start, stop, layer)`` per request, in row order; rows ``start:stop`` get
    ``layer``'s delta computed on those rows alone (the shape of the request's own run), or zeros
    when ``layer`` is None. ``out_features``: the module's output width.
    """

    segments: tuple[tuple[int, int, LayerPatch | None], ...]
    out_features: int

    @property
    def batched(self) -> bool:
        return True  # one delta per row: combine_patches leaves it as it is

    def output_delta(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.segments[-1][1]
        live = live_rows()
        if live is not None and x.dim() == 3 and x.shape[0] == len(live) != rows:
            return self._live_delta(x, live)
        if x.dim() != 3 or x.shape[0] != rows:
            raise ValueError(f"edits for a batch of {rows} rows got input {tuple(x.shape)}")
        parts = []
        for start, stop, layer in self.segments:
            if layer is None:
                parts.append(x.new_zeros((stop - start, x.shape[1], self.out_features)))
                continue
            part = x[start:stop]
            if part.data_ptr() % _ALIGNMENT:  # BLAS results may depend on alignment: as alone
                part = part.clone()
            parts.append(layer.output_delta(part))
        return torch.cat(parts)

    def _live_delta(self, x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """The delta once the decoder has dropped finished rows: ``x``'s rows are the original
        rows ``live`` (ascending), each request's still contiguous."""
        parts = []
        for start, stop, layer in self.segments:
            chosen = ((live >= start) & (live < stop)).nonzero().flatten()
            if len(chosen) == 0:
                continue
            part = x[int(chosen[0]):int(chosen[-1]) + 1]
            parts.append(part.new_zeros((len(chosen), x.shape[1], self.out_features)) if layer is None
                         else layer.output_delta(part.clone() if part.data_ptr() % _ALIGNMENT else part))
        return torch.cat(parts)


def request_rows_patch(requests: Sequence[tuple[int, Sequence[Patch]]]) -> Patch:
    """One patch for a batch of requests, given each request's row count and patch stack, in row
    order: the rows of each request get that request's edits exactly as when it runs alone
    (isolation rule 2 of the module doc). Stacks must hold unbatched patches only."""
    folded = []
    for _, stack in requests:
        combined = combine_patches(tuple(stack))
        if len(combined) > 1 or any(layer.batched for p in combined for layer in p.layers.values()):
            raise ValueError("request_rows_patch takes stacks of unbatched patches")
        folded.append(combined[0].layers if combined else {})
    names = list(dict.fromkeys(name for layers in folded for name in layers))
    modules = {}
    for name in names:
        segments, start, width = [], 0, 0
        for (rows, _), layers in zip(requests, folded, strict=True):
            layer = layers.get(name)
            if layer is not None:
                width = layer.d.shape[-1]
            segments.append((start, start + rows, layer))
            start += rows
        modules[name] = RequestRows(tuple(segments), width)
    return Patch(modules)


@dataclass(eq=False)
class _Request:
    jobs: tuple[tuple[tuple[Patch, ...], list[str], bool], ...]  # (stack, texts, first sentence) in row order
    config: GenerationConfig
    group: tuple
    width: int = 0        # its padded width alone: the token count of its longest prompt
    padded: bool = False  # whether any of its rows is padded alone
    arrived: float = field(default_factory=time.monotonic)
    outputs: list[str] | None = None
    error: BaseException | None = None
    done: bool = False

    @property
    def texts(self) -> list[str]:
        return [t for _, texts, _ in self.jobs for t in texts]

    @property
    def rows(self) -> int:
        return sum(len(texts) for _, texts, _ in self.jobs)

    def row_stacks(self) -> list[tuple[int, tuple[Patch, ...]]]:
        """(rows, stack) per job, for :func:`request_rows_patch`."""
        return [(len(texts), patches) for patches, texts, _ in self.jobs]

    def sentence_rows(self) -> tuple[bool, ...]:
        """Per row: whether it stops at its first sentence."""
        return tuple(cut for _, texts, cut in self.jobs for _ in texts)

    def result(self) -> list[str]:
        if self.error is not None:
            raise self.error
        if self.outputs is None:
            raise RuntimeError("the batched generation ended without a result for this request")
        return self.outputs


Generate = Callable[[Backbone, Sequence[str], GenerationConfig], list[str]]


class GenerationBatcher:
    """Runs generation requests from many threads as batched ``generate`` calls (module doc).

    Args:
        backbone: the shared model.
        window_ms: how long the head of the queue waits for companions (0: only requests that
            queued while the previous batch ran are batched).
        max_rows: most rows (prompts) in one batch; a larger request runs alone.
        max_extra_pad: most padding tokens a request's rows may get beyond their padding alone
            (requests whose padded widths differ by more never share a batch, so a short request
            is not slowed much by a long one); 0: only requests of equal padded width (and
            padding) meet, the exact rule of the module doc.
        batch_unedited: let requests without edits join batches too (their rows get zero
            factors); off by default so the unedited model's outputs stay bitwise exact.
        generate_fn: the generation function (``model.generation.generate``; tests count calls).
    """

    def __init__(self, backbone: Backbone, window_ms: float = 20.0, max_rows: int = 16, *,
                 max_extra_pad: int = DEFAULT_MAX_EXTRA_PAD, batch_unedited: bool = False,
                 generate_fn: Generate = generate) -> None:
        if window_ms < 0 or max_rows < 1 or max_extra_pad < 0:
            raise ValueError("window_ms must be >= 0, max_rows >= 1 and max_extra_pad >= 0, got "
                             f"{window_ms}, {max_rows}, {max_extra_pad}")
        self.backbone = backbone
        self.window_s = window_ms / 1000.0
        self.max_rows = max_rows
        self.max_extra_pad = int(max_extra_pad)
        self.batch_unedited = batch_unedited
        self._generate = generate_fn
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False
        self._closed = False
        self._clients = 0
        self._stats = {"requests": 0, "alone": 0, "batches": 0, "batched_requests": 0,
                       "batched_rows": 0, "largest_batch": 0, "mixed_width_batches": 0,
                       "extra_padded_rows": 0, "largest_extra_pad": 0, "fallbacks": 0}

    # ----- the callers ----------------------------------------------------------------------
    @contextlib.contextmanager
    def client(self) -> Iterator[GenerationBatcher]:
        """Announce a caller that may submit requests in the ``with`` body and route this
        context's :func:`~instructedit.measuring.probing.generate_under` calls through the batcher
        (:func:`current_batcher`). A leader stops waiting once every announced caller waits, so a
        request alone starts at once."""
        if _CURRENT.get() is self:  # nested: already announced
            yield self
            return
        with self._cond:
            self._clients += 1
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)
            with self._cond:
                self._clients -= 1
                self._cond.notify_all()

    def generate(self, patches: Sequence[Patch], texts: Sequence[str], max_new_tokens: int = 20,
                 chat: bool = False) -> list[str]:
        """Greedy continuations of ``texts`` with exactly ``patches`` active, as
        ``PatchEngine.activate(patches)`` around ``generate`` gives them alone (within the
        module doc's tolerance when batched). Raises what this request alone raises."""
        return self.generate_jobs([(patches, texts)], max_new_tokens, chat=chat)[0]

    def generate_jobs(self, jobs: Sequence[tuple], max_new_tokens: int = 20, *, chat: bool = False,
                      first_sentence: bool = False) -> list[list[str]]:
        """:meth:`generate` for one request holding several jobs, ``(patch stack, texts)`` or
        ``(patch stack, texts, first_sentence)``: each job's rows under its own stack, stopping
        at their first sentence where the job says so (``first_sentence``: the default), in one
        call alone and as one request's rows when batched. Requests of several jobs join batches
        when one of their stacks holds an edit (rule 3 reads the request's stacks together)."""
        request = self._request(jobs, max_new_tokens, chat, first_sentence)
        shape = self._shape(request)
        with self._cond:
            self._stats["requests"] += 1
            if shape is None:
                self._stats["alone"] += 1
        if shape is None:
            return self._split(request, self._alone(request))
        request.group, request.width, request.padded = shape
        with self._cond:
            self._queue.append(request)
            self._cond.notify_all()
            try:
                batch = self._lead_or_wait(request)
            except BaseException:  # interrupted while waiting: never leave a dead head in the queue
                if request in self._queue:
                    self._queue.remove(request)
                    self._cond.notify_all()
                raise
        if batch is not None:
            self._run_and_release(batch)
        return self._split(request, request.result())

    def runs_alone(self, jobs: Sequence[tuple], max_new_tokens: int = 20, *, chat: bool = False,
                   first_sentence: bool = False) -> bool:
        """Whether a request of these jobs (as :meth:`generate_jobs` takes them) would run alone,
        never batched with others' rows (isolation rule 3, or more than ``max_rows`` rows)."""
        return self._shape(self._request(jobs, max_new_tokens, chat, first_sentence)) is None

    @staticmethod
    def _request(jobs: Sequence[tuple], max_new_tokens: int, chat: bool, first_sentence: bool) -> _Request:
        request_jobs = tuple((tuple(job[0]), list(job[1]), bool(job[2]) if len(job) > 2 else first_sentence)
                             for job in jobs)
        rows = tuple(cut for _, texts, cut in request_jobs for _ in texts)
        return _Request(request_jobs, GenerationConfig(max_new_tokens=max_new_tokens, chat=chat,
                                                       first_sentence=rows), ())

    @staticmethod
    def _split(request: _Request, outputs: list[str]) -> list[list[str]]:
        pieces, start = [], 0
        for _, texts, _ in request.jobs:
            pieces.append(outputs[start:start + len(texts)])
            start += len(texts)
        return pieces

    def stats(self) -> dict[str, int]:
        """Requests seen, run alone, batched calls and what they carried (``mixed_width_batches``:
        calls whose requests had different padded widths; ``extra_padded_rows``: rows padded beyond
        their run alone, ``largest_extra_pad`` tokens at most), batch-failure fallbacks."""
        with self._cond:
            return dict(self._stats)

    def close(self, timeout: float | None = None) -> bool:
        """Stop waiting for companions: queued requests run at once, later ones alone. Returns
        whether the queue drained within ``timeout`` seconds (None: wait until it does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def __enter__(self) -> GenerationBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- grouping -------------------------------------------------------------------------
    def _shape(self, request: _Request) -> tuple[tuple, int, bool] | None:
        """``(group, width, padded)`` of a request that can be batched (isolation rules 1 and 3),
        or None: it runs alone. Requests of one group may share a batch when their padded widths
        (``width``: its longest prompt in tokens) differ by at most ``max_extra_pad``; with
        ``max_extra_pad`` 0 also only when they agree on ``padded`` (any row shorter than another)."""
        stacks = [patches for patches, _, _ in request.jobs]
        texts, config = request.texts, request.config
        if (not texts or len(texts) > self.max_rows or self._closed
                or (not any(stacks) and not self.batch_unedited)
                or any(layer.batched for patches in stacks for p in patches for layer in p.layers.values())):
            return None
        tokenizer = self.backbone.tokenizer
        lengths = [len(tokenizer(format_prompt(self.backbone, t, config.chat),
                                 add_special_tokens=not config.chat)["input_ids"]) for t in texts]
        width = max(lengths)
        return (config.max_new_tokens, config.chat), width, min(lengths) < width

    def _lead_or_wait(self, request: _Request) -> list[_Request] | None:
        """Under the lock: wait until ``request`` is done (None) or leads a batch (returned, taken
        off the queue, the batcher marked busy)."""
        while not request.done:
            if self._busy or not self._queue or self._queue[0] is not request:
                self._cond.wait()
                continue
            deadline = request.arrived + self.window_s
            while True:
                batch = self._companions(request)
                left = deadline - time.monotonic()
                everyone = 0 < self._clients <= len(self._queue)
                if (sum(r.rows for r in batch) >= self.max_rows or left <= 0 or everyone
                        or self._closed):
                    break
                self._cond.wait(left)
            for member in batch:
                self._queue.remove(member)
            self._busy = True
            return batch
        return None

    def _companions(self, head: _Request) -> list[_Request]:
        """``head`` and the queued requests that may share its batch (same group, widths within
        ``max_extra_pad`` of every member's), first come first served, up to ``max_rows``."""
        batch, rows = [head], head.rows
        low = high = head.width
        for request in self._queue:
            if (request is head or request.group != head.group
                    or rows + request.rows > self.max_rows):
                continue
            if self.max_extra_pad == 0 and request.padded != head.padded:
                continue  # the exact rule: a row without padding alone gets none in the batch
            if max(high, request.width) - min(low, request.width) > self.max_extra_pad:
                continue
            batch.append(request)
            rows += request.rows
            low, high = min(low, request.width), max(high, request.width)
        return batch

    # ----- running --------------------------------------------------------------------------
    def _alone(self, request: _Request) -> list[str]:
        if len(request.jobs) == 1:
            patches, texts, _ = request.jobs[0]
            with PatchEngine.activate(list(patches)):
                return self._generate(self.backbone, texts, request.config)
        if any(layer.batched for patches, _, _ in request.jobs for p in patches for layer in p.layers.values()):
            outputs = []
            for patches, texts, cut in request.jobs:
                with PatchEngine.activate(list(patches)):
                    outputs += self._generate(self.backbone, texts,
                                              dataclasses.replace(request.config, first_sentence=cut))
            return outputs
        with PatchEngine.activate(request_rows_patch(request.row_stacks())):
            return self._generate(self.backbone, request.texts, request.config)

    def _run_and_release(self, batch: list[_Request]) -> None:
        try:
            self._run(batch)
        finally:
            with self._cond:
                for request in batch:
                    request.done = True
                self._busy = False
                self._cond.notify_all()

    def _run(self, batch: list[_Request]) -> None:
        """Every request of ``batch`` gets its outputs or its own error; never raises."""
        if len(batch) == 1:
            with self._cond:
                self._stats["alone"] += 1
        else:
            try:
                outputs = self._batched(batch)
            except Exception:  # noqa: BLE001 - each request is retried alone below
                log.warning("a batch of %d requests failed; running them one by one", len(batch),
                            exc_info=True)
                with self._cond:
                    self._stats["fallbacks"] += 1
            else:
                start = 0
                for request in batch:
                    request.outputs = outputs[start:start + request.rows]
                    start += request.rows
                return
        for request in batch:
            try:
                request.outputs = self._alone(request)
            except BaseException as exc:  # noqa: BLE001 - handed to the request's own caller
                request.error = exc

    def _batched(self, batch: list[_Request]) -> list[str]:
        texts = [t for request in batch for t in request.texts]
        patch = request_rows_patch([stack for request in batch for stack in request.row_stacks()])
        config = dataclasses.replace(batch[0].config,
                                     first_sentence=tuple(c for request in batch for c in request.sentence_rows()))
        with PatchEngine.activate(patch):
            outputs = self._generate(self.backbone, texts, config)
        if len(outputs) != len(texts):
            raise RuntimeError(f"generate returned {len(outputs)} texts for {len(texts)} prompts")
        width = max(request.width for request in batch)
        extra = [width - request.width for request in batch for _ in request.texts]
        with self._cond:
            self._stats["batches"] += 1
            self._stats["batched_requests"] += len(batch)
            self._stats["batched_rows"] += len(texts)
            self._stats["largest_batch"] = max(self._stats["largest_batch"], len(texts))
            if max(extra):
                self._stats["mixed_width_batches"] += 1
                self._stats["extra_padded_rows"] += sum(1 for e in extra if e)
                self._stats["largest_extra_pad"] = max(self._stats["largest_extra_pad"], max(extra))
        return list(outputs)
