"""Probes measured before and after an edit, batched: what the studio and the CLI show for each
prompt.

For a list of probes, :func:`measure_probes` makes one generation call before the edit and one
after (memoised per patch stack, so texts already generated are not generated again) and one
teacher-forced pass each, with the evaluation's scoring (:mod:`instructedit.scoring`):

- p(target): probability of the edit's target after the probe (and its token accuracy, before and
  after);
- p(own answer): probability of the probe's own answer where known (data neighbours), else of the
  first token of its continuation before the edit;
- agreement (for the groups asked, the paper's locality): share of the first few tokens of the
  continuation before the edit whose argmax is unchanged;
- the verdict on the continuations (:mod:`.verdicts`).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from ..editing.editor import MAX_TARGET_TOKENS
from ..editing.patches import Patch, PatchEngine
from ..model.backbone import Backbone
from ..model.generation import GenerationConfig, generate
from ..scoring import AnswerBatch, agreement, full_model_answer_logits, score_answers, tokenize_answers
from ..serving.batcher import current_batcher, request_rows_patch
from .verdicts import SAME_ANSWER, verdict


class UneditedTexts:
    """Server-wide memory of the unedited model's continuations (thread-safe, least recently used
    first out).

    Two kinds of entry: texts generated on their own (one prompt per call, as the Playground
    generates: ``width=None``), so a cached text is the one the Playground shows; and rows of a
    batched call (the blast radius's probes before an edit), kept under the batch's padded width
    (``width``: tokens of its longest prompt) and read back only by a call padded to the same
    width, so a row read back matches the edited rows computed beside it as if it had been
    generated with them (only the batch size differs). ``first_sentence`` marks continuations cut
    at their first sentence."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._texts: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, max_new_tokens: int, prompt: str, *, first_sentence: bool = False,
            width: int | None = None) -> str | None:
        with self._lock:
            key = (_length_key(max_new_tokens, first_sentence), prompt, width)
            if key in self._texts:
                self._texts.move_to_end(key)
                return self._texts[key]
            return None

    def put(self, max_new_tokens: int, prompt: str, text: str, *, first_sentence: bool = False,
            width: int | None = None) -> None:
        with self._lock:
            key = (_length_key(max_new_tokens, first_sentence), prompt, width)
            self._texts[key] = text
            self._texts.move_to_end(key)
            while len(self._texts) > self.capacity:
                self._texts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._texts)


class GenerationCache(dict):
    """One request's continuations, keyed by (patch stack, length, text); the unedited model's
    are also looked up in and added to ``shared`` (see :class:`UneditedTexts`). It also keeps the
    teacher-forced answer logits of probes before an edit, which the next editor measured on the
    same stack and probes reads instead of recomputing."""

    def __init__(self, shared: UneditedTexts | None = None) -> None:
        super().__init__()
        self.shared = shared

    def add(self, patches: Sequence[Patch], max_new_tokens: int, text: str, continuation: str) -> None:
        """Record a continuation of ``text`` (whole, not cut at its first sentence) already known
        under exactly ``patches``."""
        self[(_patch_state(patches), _length_key(max_new_tokens, False), text)] = continuation


def _patch_state(patches: Sequence[Patch]) -> tuple[int, ...]:
    return tuple(id(p) for p in patches)

PROMPT = "prompt"
REPHRASE = "rephrase"
LOCALITY = "locality"
WRAPPED = "wrapped"
WRAPPED_REPHRASE = "wrapped rephrase"


@dataclass(frozen=True)
class Probe:
    """A prompt to measure, its group, and its own answer when known."""

    prompt: str
    group: str
    answer: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    """One probe before and after the edit (probabilities teacher-forced; see the module doc).

    ``before``/``after``/``verdict`` are empty when texts were not generated (imports).
    ``target_accuracy``: the target's token accuracy after the edit (``target_accuracy_before``:
    before it).
    """

    prompt: str
    group: str
    before: str
    after: str
    verdict: str
    answer: str | None
    answer_known: bool
    p_answer_before: float | None
    p_answer_after: float | None
    p_target_before: float
    p_target_after: float
    target_accuracy: float
    agreement: float | None = None
    target_accuracy_before: float | None = None

    @property
    def unchanged(self) -> bool:
        """The verdict is ``same answer`` (a probe is *changed* otherwise)."""
        return self.verdict == SAME_ANSWER


Job = tuple[Sequence[Patch], Sequence[str]] | tuple[Sequence[Patch], Sequence[str], bool]
"""A patch stack, the texts to continue with exactly it active and, optionally, whether they stop
at their first sentence (the call's ``first_sentence`` otherwise)."""

_Rows = tuple[tuple[Patch, ...], list[str], bool]  # a job's rows still to generate


def _length_key(max_new_tokens: int, first_sentence: bool) -> int | tuple[int, str]:
    return (max_new_tokens, "first sentence") if first_sentence else max_new_tokens


def generate_under(backbone: Backbone, patches: Sequence[Patch], texts: Sequence[str],
                   max_new_tokens: int, cache: GenerationCache | None = None, *,
                   first_sentence: bool = False) -> dict[str, str]:
    """Greedy continuations of ``texts`` with exactly ``patches`` active (memoised in ``cache``;
    with no patch, also in the cache's ``shared`` store when it has one). Inside a
    :meth:`~instructedit.serving.batcher.GenerationBatcher.client` context of this backbone's
    batcher, the texts to generate go through it (batched with other sessions' calls).
    ``first_sentence``: each continuation stops at the end of its first sentence."""
    return generate_jobs(backbone, [(patches, texts)], max_new_tokens, cache, first_sentence=first_sentence)[0]


def generate_jobs(backbone: Backbone, jobs: Sequence[Job], max_new_tokens: int,
                  cache: GenerationCache | None = None, *, first_sentence: bool = False,
                  ) -> list[dict[str, str]]:
    """:func:`generate_under` for several patch stacks at once: the texts not yet in ``cache``
    run as one batched generation in which each job's rows carry its own stack
    (:func:`~instructedit.serving.batcher.request_rows_patch`; stacks of batched patches run one
    call each) and stop where the job says, so all a request shows before and after its edits
    can cost one call.

    Unedited rows of a call of several rows are also looked up in and kept in the cache's shared
    store under the call's padded width (:class:`UneditedTexts`), when the call runs with exactly
    that width (directly, or alone through the batcher)."""
    cache = GenerationCache() if cache is None else cache
    jobs = [(tuple(job[0]), list(job[1]), bool(job[2]) if len(job) > 2 else first_sentence) for job in jobs]
    shared = getattr(cache, "shared", None)
    width = _padded_width(backbone, [t for _, texts, _ in jobs for t in texts]) if shared is not None else 0
    missing: dict[int, list[str]] = {}
    planned: set[tuple] = set()
    borrowed: list[tuple[int, str]] = []  # unedited rows read back from earlier calls of this width
    for j, (patches, texts, cut) in enumerate(jobs):
        state, length = _patch_state(patches), _length_key(max_new_tokens, cut)
        for text in dict.fromkeys(texts):
            key = (state, length, text)
            if key in cache or key in planned:
                continue
            if shared is not None and not state:
                alone = None if cut else shared.get(max_new_tokens, text)
                row = None if alone is not None else shared.get(max_new_tokens, text, first_sentence=cut,
                                                                 width=width)
                if alone is not None or row is not None:
                    cache[key] = alone if alone is not None else row
                    if alone is None:
                        borrowed.append((j, text))
                    continue
            planned.add(key)
            missing.setdefault(j, []).append(text)

    def rows_left() -> list[_Rows]:
        return [(jobs[j][0], texts, jobs[j][2]) for j, texts in sorted(missing.items())]

    todo = rows_left()
    if todo and borrowed and _padded_width(backbone, [t for _, texts, _ in todo for t in texts]) != width:
        for j, text in borrowed:  # the rows left would pad to another width: generate all
            del cache[((), _length_key(max_new_tokens, jobs[j][2]), text)]
            missing.setdefault(j, []).append(text)
        todo = rows_left()
    if todo:
        outputs, exact = _run_jobs(backbone, todo, max_new_tokens)
        for (patches, texts, cut), outs in zip(todo, outputs, strict=True):
            for text, out in zip(texts, outs, strict=True):
                cache[(_patch_state(patches), _length_key(max_new_tokens, cut), text)] = out
        if shared is not None and exact:
            _keep_unedited(backbone, shared, todo, outputs, max_new_tokens)
    return [{t: cache[(_patch_state(patches), _length_key(max_new_tokens, cut), t)] for t in texts}
            for patches, texts, cut in jobs]


def _padded_width(backbone: Backbone, texts: Sequence[str]) -> int:
    """Tokens of the longest of ``texts``: the width a call pads them to."""
    return max((len(backbone.tokenizer(t)["input_ids"]) for t in texts), default=0)


def _keep_unedited(backbone: Backbone, shared: UneditedTexts, jobs: list[_Rows], outputs: list[list[str]],
                   max_new_tokens: int) -> None:
    """Keep the unedited rows of a call just run (one prompt alone: as the Playground's text)."""
    rows = sum(len(texts) for _, texts, _ in jobs)
    width = _padded_width(backbone, [t for _, texts, _ in jobs for t in texts])
    for (patches, texts, cut), outs in zip(jobs, outputs, strict=True):
        if patches:
            continue
        for text, out in zip(texts, outs, strict=True):
            if rows == 1 and not cut:
                shared.put(max_new_tokens, text, out)
            else:
                shared.put(max_new_tokens, text, out, first_sentence=cut, width=width)


def _run_jobs(backbone: Backbone, jobs: list[_Rows], max_new_tokens: int) -> tuple[list[list[str]], bool]:
    """Each job's continuations, all jobs in one call where their stacks allow it, and whether
    the call ran with exactly these rows (not batched with other requests' rows)."""
    batcher = current_batcher()
    if batcher is not None and batcher.backbone is backbone:
        exact = batcher.runs_alone(jobs, max_new_tokens)
        return batcher.generate_jobs(jobs, max_new_tokens), exact
    if len(jobs) == 1 or any(_has_batched(patches) for patches, _, _ in jobs):
        outputs = []
        for patches, texts, cut in jobs:
            with PatchEngine.activate(list(patches)):
                outputs.append(generate(backbone, texts, GenerationConfig(max_new_tokens, first_sentence=cut)))
        return outputs, len(jobs) == 1
    flags = tuple(cut for _, texts, cut in jobs for _ in texts)
    with PatchEngine.activate(request_rows_patch([(len(texts), patches) for patches, texts, _ in jobs])):
        flat = generate(backbone, [t for _, texts, _ in jobs for t in texts],
                        GenerationConfig(max_new_tokens, first_sentence=flags))
    return split_rows(flat, [len(texts) for _, texts, _ in jobs]), True


def _has_batched(patches: Sequence[Patch]) -> bool:
    return any(layer.batched for p in patches for layer in p.layers.values())


def split_rows(flat: Sequence, counts: Sequence[int]) -> list[list]:
    """``flat`` cut into consecutive pieces of ``counts`` items."""
    pieces, start = [], 0
    for count in counts:
        pieces.append(list(flat[start:start + count]))
        start += count
    return pieces


def first_tokens(tokenizer, text: str, n: int) -> str | None:
    """The first ``n`` tokens of ``text`` as text (stripped), or ``None`` if nothing is left."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return answer or None


@torch.no_grad()
def _answer_logits(backbone: Backbone, patches: Sequence[Patch], batch) -> torch.Tensor:
    with PatchEngine.activate(list(patches)):
        return full_model_answer_logits(backbone.model, batch)


def _answer_logits_before_after(backbone: Backbone, before: Sequence[Patch], after: Sequence[Patch],
                                batch: AnswerBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer logits of ``batch`` with ``before`` and with ``after`` active, in one pass over
    the batch twice, each half under its own stack (two passes for stacks of batched patches)."""
    if _has_batched(before) or _has_batched(after):
        return _answer_logits(backbone, before, batch), _answer_logits(backbone, after, batch)
    rows, answers = batch.size, len(batch.rows)
    doubled = AnswerBatch(batch.input_ids.repeat(2, 1), batch.attention_mask.repeat(2, 1),
                          torch.cat([batch.rows, batch.rows + rows]), batch.positions.repeat(2),
                          batch.answer_tokens.repeat(2), batch.prompt_lengths * 2)
    stacks = request_rows_patch([(rows, tuple(before)), (rows, tuple(after))])
    logits = _answer_logits(backbone, [stacks], doubled)
    return logits[:answers], logits[answers:]


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def measure_probes(backbone: Backbone, before: Sequence[Patch], after: Sequence[Patch],
                   probes: Sequence[Probe], target: str, *, max_new_tokens: int,
                   cache: GenerationCache | None = None, says_target: bool = True,
                   agreement_groups: Collection[str] = (), agreement_tokens: int = 5,
                   texts: bool = True, text_groups: Collection[str] | None = None,
                   first_sentence: bool = False) -> tuple[ProbeResult, ...]:
    """Measure ``probes`` with ``before`` and with ``after`` active (see the module doc).

    ``says_target=False``: verdicts never say "now says <target>" (targets that are responses).
    ``texts=False``: only the continuations the numbers need are generated (before the edit, as
    long as the agreement answer), and no verdicts (re-applying imported edits).
    ``text_groups``: only these groups' continuations are shown (None: every group's); the
    others get teacher-forced figures only (what a first, quick look needs).
    ``first_sentence``: continuations stop at the end of their first sentence (the blast radius:
    its verdicts read only that).
    """
    if not probes:
        return ()
    cache = GenerationCache() if cache is None else cache
    tokenizer = backbone.tokenizer
    shown = [p.prompt for p in probes if texts and (text_groups is None or p.group in text_groups)]
    read_off = [p.prompt for p in probes if p.answer is None or p.group in agreement_groups]
    if shown:  # before and after in one call
        pre, post = generate_jobs(backbone, [(before, list(dict.fromkeys([*shown, *read_off]))), (after, shown)],
                                  max_new_tokens, cache, first_sentence=first_sentence)
    else:
        pre, post = generate_under(backbone, before, read_off, max_new_tokens if texts else agreement_tokens,
                                   cache, first_sentence=first_sentence), {}

    pairs: list[tuple[str, str]] = []
    rows: list[dict[str, int]] = []
    answers: list[str | None] = []
    for probe in probes:
        row = {"target": len(pairs)}
        pairs.append((probe.prompt, target))
        own = probe.answer if probe.answer is not None else first_tokens(tokenizer, pre[probe.prompt], 1)
        answers.append(own)
        if own and not _same(own, target):
            row["own"] = len(pairs)
            pairs.append((probe.prompt, own))
        if probe.group in agreement_groups:
            paper = first_tokens(tokenizer, pre[probe.prompt], agreement_tokens)
            if paper is not None:
                row["agree"] = len(pairs)
                pairs.append((probe.prompt, paper))
        rows.append(row)

    batch = tokenize_answers(tokenizer, [p for p, _ in pairs], [a for _, a in pairs],
                             max_answer_tokens=MAX_TARGET_TOKENS).to(backbone.device)
    known = ("answer logits", _patch_state(before), tuple(pairs))  # another editor's pass before
    if known in cache:
        logits_pre, logits_post = cache[known], _answer_logits(backbone, after, batch)
    else:
        logits_pre, logits_post = _answer_logits_before_after(backbone, before, after, batch)
        cache[known] = logits_pre
    s_pre, s_post = score_answers(logits_pre, batch), score_answers(logits_post, batch)
    agree = agreement(s_pre.argmax, s_post.argmax, batch).tolist()
    p_pre, p_post = s_pre.probability.tolist(), s_post.probability.tolist()
    accuracy, accuracy_pre = s_post.token_accuracy.tolist(), s_pre.token_accuracy.tolist()

    results = []
    for probe, row, own in zip(probes, rows, answers, strict=True):
        t, o = row["target"], row.get("own", row["target"] if own else None)
        seen = probe.prompt in post
        b, a = pre.get(probe.prompt, "") if seen else "", post.get(probe.prompt, "")
        results.append(ProbeResult(
            prompt=probe.prompt, group=probe.group, before=b, after=a,
            verdict=verdict(b, a, target if says_target else None) if seen else "",
            answer=own, answer_known=probe.answer is not None,
            p_answer_before=p_pre[o] if o is not None else None,
            p_answer_after=p_post[o] if o is not None else None,
            p_target_before=p_pre[t], p_target_after=p_post[t], target_accuracy=accuracy[t],
            agreement=agree[row["agree"]] if "agree" in row else None,
            target_accuracy_before=accuracy_pre[t]))
    return tuple(results)
