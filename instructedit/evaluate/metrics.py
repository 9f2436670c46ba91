"""Per-record evaluation results and their aggregation into one summary.

Every number comes from :mod:`instructedit.scoring` (teacher-forced token accuracy, argmax
agreement, KL); this module only averages them: per record first (over its rephrases, probes,
answer tokens), then over records. A metric a record cannot have (no rephrase, no locality
probe, no portability question) is ``None`` for that record and left out of the mean; a metric
no record has is ``None`` in the summary.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from .plain import PlainResult, PlainSummary


@dataclass
class RecordResult(PlainResult):
    """The measurements of one edit.

    ``reliability``/``reliability_pre``: token accuracy of the target on the edit input after /
    before the edit. ``target_logprob_*``: mean per-token log-probability of the target on the
    edit input. ``locality``: argmax agreement on locality answers; ``locality_kl``: mean
    KL(pre || post) there. ``sentiment_success``/``fluency``/``generation``: ConvSent only.
    The plain protocol's fields come from :class:`~instructedit.evaluate.plain.PlainResult`.
    """

    id: str
    task: str
    instruction: str | None
    reliability: float
    reliability_pre: float
    target_logprob_pre: float
    target_logprob_post: float
    generalization: float | None = None
    locality: float | None = None
    locality_kl: float | None = None
    portability: float | None = None
    latency_ms: float | None = None
    sentiment_success: float | None = None
    fluency: float | None = None
    generation: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not ``None`` (``None`` when there are none)."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Fluency of a generation: weighted mean of its n-gram entropies (bits), as in ROME/MEND.

    Repetitive text has a low entropy; an empty text scores 0.
    """
    tokens = _WORD.findall(text.lower())
    entropies = []
    for n in ns:
        grams = Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        entropies.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * h for w, h in zip(weights, entropies, strict=False)) / len(ns)


@dataclass
class EvalSummary(PlainSummary):
    """Means over records of :class:`RecordResult` (what ``eval --json`` prints).

    ``target_prob_lift`` is the mean gain in per-token target log-probability on the edit input
    (nats; ``exp`` of it is the geometric-mean factor by which each target token's probability
    grew). ``target_prob_pre``/``post`` are the means of the per-token geometric-mean
    probabilities. ``edit_latency_ms`` is the editing time per record amortised over a batch.
    ``counts`` says how many records had each optional metric.
    """

    n: int
    task: str
    reliability: float | None
    generalization: float | None
    locality: float | None
    portability: float | None
    target_prob_lift: float | None
    edit_latency_ms: float | None
    seconds: float
    reliability_pre: float | None = None
    locality_kl: float | None = None
    target_prob_pre: float | None = None
    target_prob_post: float | None = None
    sentiment_success: float | None = None
    kl_drawdown: float | None = None
    fluency: float | None = None
    counts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def task_label(results: Sequence[RecordResult]) -> str:
    """The task of the records (``mixed`` when they differ, ``none`` when empty)."""
    tasks = sorted({r.task for r in results})
    return tasks[0] if len(tasks) == 1 else ("mixed" if tasks else "none")


def summarize(results: Sequence[RecordResult], seconds: float) -> EvalSummary:
    """Aggregate per-record results into an :class:`EvalSummary`."""
    def m(name: str) -> float | None:
        return mean_or_none(getattr(r, name) for r in results)

    lifts = [r.target_logprob_post - r.target_logprob_pre for r in results]
    convsent = [r for r in results if r.task == "convsent"]
    summary = EvalSummary(
        n=len(results), task=task_label(results),
        reliability=m("reliability"), generalization=m("generalization"), locality=m("locality"),
        portability=m("portability"), target_prob_lift=mean_or_none(lifts),
        edit_latency_ms=m("latency_ms"), seconds=round(seconds, 3),
        reliability_pre=m("reliability_pre"), locality_kl=m("locality_kl"),
        target_prob_pre=mean_or_none(math.exp(r.target_logprob_pre) for r in results),
        target_prob_post=mean_or_none(math.exp(r.target_logprob_post) for r in results),
        counts={name: sum(getattr(r, name) is not None for r in results)
                for name in ("generalization", "locality", "portability", "sentiment_success")},
    )
    summary.fill(m)
    summary.counts["neighbourhood_score"] = sum(r.neighbourhood_score is not None for r in results)
    if convsent:
        summary.sentiment_success = mean_or_none(r.sentiment_success for r in convsent)
        summary.kl_drawdown = mean_or_none(r.locality_kl for r in convsent)
        summary.fluency = mean_or_none(r.fluency for r in convsent)
    return summary
