"""Cross-session batching: generation calls from many threads (sessions) run as one batched
``generate`` in which each request's rows carry that request's own edits (multi-adapter serving
in the spirit of S-LoRA and Punica, for low-rank edit patches).

How it runs. :meth:`GenerationBatcher.generate` takes a request ``(patches, texts,
max_new_tokens)``. A request that can be batched joins a queue. One batch runs at a time; its
leader is the caller at the head of the queue, which waits for companions until the batch is full
(``max_rows`` rows), until every announced caller (:meth:`GenerationBatcher.client`) is waiting,
or until the window (``window_ms``, counted from its own arrival) has passed; it then runs the
head request and the queued requests of the same group (first come, first served) as one
``generate`` in its own thread and hands every caller exactly its rows. A request alone (the only
announced caller) waits for nothing and runs as a batch of one, which is the direct path of the
code without a batcher: ``PatchEngine.activate(patches)`` around ``generate``. No thread of its
own: nothing to stop; :meth:`~GenerationBatcher.close` lets queued requests run at once and sends
later ones down the direct path.

Isolation rule (what keeps a row's output equal to its request's run on its own):

1. No row is padded more than alone: requests are grouped by (new tokens, chat template, padded
   width, whether any of its rows is padded), and the batch is left-padded to that width, so each
   row's token ids, attention mask and positions are those of its own run.
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
4. What is left is the batch size itself: the base model's matrix products see more rows.
   Measured on the test suite's tiny LLaMA and GPT-2 (CPU, torch 2.13, bitsandbytes 0.50.2):
   4-bit nf4 with bf16 compute is bitwise equal batched or alone, logits and texts; in float32 the
   prompt pass is bitwise equal too, but a one-row request decodes with a matrix-vector kernel
   alone and a matrix-matrix one in a batch, and its logits differ by up to 1.6e-6. The stated
   tolerance, tested in ``tests/test_batching.py``: every step's logits within
   :data:`LOGIT_TOLERANCE` of the run alone (1e-5 in float32, 0 in bf16), so a greedy token can
   change only where the run alone had its two best logits closer than that (the texts of every
   case tested are equal). Other backends (a GPU) are not measured: batching is off in the studio
   unless ``--batch-window-ms`` asks for it.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..editing.patches import LayerPatch, Patch, PatchEngine, combine_patches
from ..model.backbone import Backbone
from ..model.generation import GenerationConfig, format_prompt, generate

__all__ = ["GenerationBatcher", "RequestRows", "LOGIT_TOLERANCE", "current_batcher", "request_rows_patch"]

log = logging.getLogger(__name__)

LOGIT_TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.bfloat16: 0.0}
"""Largest difference of a batched row's logits from its run alone, by compute dtype (module doc)."""

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
    patches: tuple[Patch, ...]
    texts: list[str]
    config: GenerationConfig
    group: tuple
    arrived: float = field(default_factory=time.monotonic)
    outputs: list[str] | None = None
    error: BaseException | None = None
    done: bool = False

    @property
    def rows(self) -> int:
        return len(self.texts)

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
        batch_unedited: let requests without edits join batches too (their rows get zero
            factors); off by default so the unedited model's outputs stay bitwise exact.
        generate_fn: the generation function (``model.generation.generate``; tests count calls).
    """

    def __init__(self, backbone: Backbone, window_ms: float = 20.0, max_rows: int = 16, *,
                 batch_unedited: bool = False, generate_fn: Generate = generate) -> None:
        if window_ms < 0 or max_rows < 1:
            raise ValueError(f"window_ms must be >= 0 and max_rows >= 1, got {window_ms}, {max_rows}")
        self.backbone = backbone
        self.window_s = window_ms / 1000.0
        self.max_rows = max_rows
        self.batch_unedited = batch_unedited
        self._generate = generate_fn
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False
        self._closed = False
        self._clients = 0
        self._stats = {"requests": 0, "alone": 0, "batches": 0, "batched_requests": 0,
                       "batched_rows": 0, "largest_batch": 0, "fallbacks": 0}

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
        texts = list(texts)
        config = GenerationConfig(max_new_tokens=max_new_tokens, chat=chat)
        patches = tuple(patches)
        group = self._group(patches, texts, config)
        with self._cond:
            self._stats["requests"] += 1
            if group is None:
                self._stats["alone"] += 1
        if group is None:
            return self._alone(patches, texts, config)
        request = _Request(patches, texts, config, group)
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
        return request.result()

    def stats(self) -> dict[str, int]:
        """Requests seen, run alone, batched calls and what they carried, batch-failure fallbacks."""
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
    def _group(self, patches: tuple[Patch, ...], texts: list[str], config: GenerationConfig,
               ) -> tuple | None:
        """The group a request can be batched in (isolation rule 1), or None: it runs alone."""
        if (not texts or len(texts) > self.max_rows or self._closed
                or (not patches and not self.batch_unedited)
                or any(layer.batched for p in patches for layer in p.layers.values())):
            return None
        tokenizer = self.backbone.tokenizer
        lengths = [len(tokenizer(format_prompt(self.backbone, t, config.chat),
                                 add_special_tokens=not config.chat)["input_ids"]) for t in texts]
        width = max(lengths)
        return config.max_new_tokens, config.chat, width, min(lengths) < width

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
        """``head`` and the queued requests of its group, first come first served, up to max_rows."""
        batch, rows = [], 0
        for request in self._queue:
            if request.group == head.group and rows + request.rows <= self.max_rows:
                batch.append(request)
                rows += request.rows
        return batch

    # ----- running --------------------------------------------------------------------------
    def _alone(self, patches: Sequence[Patch], texts: list[str], config: GenerationConfig) -> list[str]:
        with PatchEngine.activate(list(patches)):
            return self._generate(self.backbone, texts, config)

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
                request.outputs = self._alone(request.patches, request.texts, request.config)
            except BaseException as exc:  # noqa: BLE001 - handed to the request's own caller
                request.error = exc

    def _batched(self, batch: list[_Request]) -> list[str]:
        texts = [t for request in batch for t in request.texts]
        patch = request_rows_patch([(request.rows, request.patches) for request in batch])
        with PatchEngine.activate(patch):
            outputs = self._generate(self.backbone, texts, batch[0].config)
        if len(outputs) != len(texts):
            raise RuntimeError(f"generate returned {len(outputs)} texts for {len(texts)} prompts")
        with self._cond:
            self._stats["batches"] += 1
            self._stats["batched_requests"] += len(batch)
            self._stats["batched_rows"] += len(texts)
            self._stats["largest_batch"] = max(self._stats["largest_batch"], len(texts))
        return list(outputs)
