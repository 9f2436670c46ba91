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
from ..scoring import agreement, full_model_answer_logits, score_answers, tokenize_answers
from ..serving.batcher import current_batcher
from .verdicts import SAME_ANSWER, verdict


class UneditedTexts:
    """Server-wide memory of the unedited model's continuations of single prompts (thread-safe,
    least recently used first out). Only texts generated on their own (one prompt per call, as
    the Playground generates) are kept, so a cached text is the one the Playground shows."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._texts: OrderedDict[tuple[int, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, max_new_tokens: int, prompt: str) -> str | None:
        with self._lock:
            key = (max_new_tokens, prompt)
            if key in self._texts:
                self._texts.move_to_end(key)
                return self._texts[key]
            return None

    def put(self, max_new_tokens: int, prompt: str, text: str) -> None:
        with self._lock:
            self._texts[(max_new_tokens, prompt)] = text
            self._texts.move_to_end((max_new_tokens, prompt))
            while len(self._texts) > self.capacity:
                self._texts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._texts)


class GenerationCache(dict):
    """One request's continuations, keyed by (patch stack, length, text); the unedited model's
    are also looked up in and added to ``shared`` (see :class:`UneditedTexts`)."""

    def __init__(self, shared: UneditedTexts | None = None) -> None:
        super().__init__()
        self.shared = shared

    def add(self, patches: Sequence[Patch], max_new_tokens: int, text: str, continuation: str) -> None:
        """Record a continuation of ``text`` already known under exactly ``patches``."""
        self[(_patch_state(patches), max_new_tokens, text)] = continuation


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


def generate_under(backbone: Backbone, patches: Sequence[Patch], texts: Sequence[str],
                   max_new_tokens: int, cache: GenerationCache | None = None) -> dict[str, str]:
    """Greedy continuations of ``texts`` with exactly ``patches`` active (memoised in ``cache``;
    with no patch, also in the cache's ``shared`` store when it has one). Inside a
    :meth:`~instructedit.serving.batcher.GenerationBatcher.client` context of this backbone's
    batcher, the texts to generate go through it (batched with other sessions' calls)."""
    cache = GenerationCache() if cache is None else cache
    state = _patch_state(patches)
    shared = getattr(cache, "shared", None) if not state else None
    missing = []
    for text in dict.fromkeys(texts):
        if (state, max_new_tokens, text) in cache:
            continue
        known = shared.get(max_new_tokens, text) if shared is not None else None
        if known is None:
            missing.append(text)
        else:
            cache[(state, max_new_tokens, text)] = known
    if missing:
        batcher = current_batcher()
        if batcher is not None and batcher.backbone is backbone:
            outputs = batcher.generate(patches, missing, max_new_tokens)
        else:
            with PatchEngine.activate(list(patches)):
                outputs = generate(backbone, missing, GenerationConfig(max_new_tokens=max_new_tokens))
        for text, out in zip(missing, outputs, strict=True):
            cache[(state, max_new_tokens, text)] = out
        if shared is not None and len(missing) == 1:
            shared.put(max_new_tokens, missing[0], outputs[0])
    return {t: cache[(state, max_new_tokens, t)] for t in texts}


def first_tokens(tokenizer, text: str, n: int) -> str | None:
    """The first ``n`` tokens of ``text`` as text (stripped), or ``None`` if nothing is left."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return answer or None


@torch.no_grad()
def _answer_logits(backbone: Backbone, patches: Sequence[Patch], batch) -> torch.Tensor:
    with PatchEngine.activate(list(patches)):
        return full_model_answer_logits(backbone.model, batch)


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def measure_probes(backbone: Backbone, before: Sequence[Patch], after: Sequence[Patch],
                   probes: Sequence[Probe], target: str, *, max_new_tokens: int,
                   cache: GenerationCache | None = None, says_target: bool = True,
                   agreement_groups: Collection[str] = (), agreement_tokens: int = 5,
                   texts: bool = True, text_groups: Collection[str] | None = None,
                   ) -> tuple[ProbeResult, ...]:
    """Measure ``probes`` with ``before`` and with ``after`` active (see the module doc).

    ``says_target=False``: verdicts never say "now says <target>" (targets that are responses).
    ``texts=False``: only the continuations the numbers need are generated (before the edit, as
    long as the agreement answer), and no verdicts (re-applying imported edits).
    ``text_groups``: only these groups' continuations are shown (None: every group's); the
    others get teacher-forced figures only (what a first, quick look needs).
    """
    if not probes:
        return ()
    tokenizer = backbone.tokenizer
    shown = [p.prompt for p in probes if texts and (text_groups is None or p.group in text_groups)]
    read_off = [p.prompt for p in probes if p.answer is None or p.group in agreement_groups]
    pre_tokens = max_new_tokens if texts else agreement_tokens
    pre = generate_under(backbone, before, list(dict.fromkeys([*shown, *read_off])) if texts else read_off,
                         pre_tokens, cache)
    post = generate_under(backbone, after, shown, max_new_tokens, cache) if shown else {}

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
    logits_pre = _answer_logits(backbone, before, batch)
    logits_post = _answer_logits(backbone, after, batch)
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
