"""The plain protocol: what a user sees after an edit, measured on text as people type it.

Edits are made as each editor makes them (with or without its instruction); everything here is
then read off plain text:

- plain reliability / generalization: teacher-forced token accuracy of the target on the plain
  prompt and the plain rephrases;
- generation success: the greedy continuation of the plain prompt contains the target;
- neighbourhood score (ROME's NS): on neighbours (the data's locality prompts and other subjects
  in the edit prompt's own sentence), the share where the true answer is more likely than the new
  target (mean NLL per answer token); ``neighbour_unchanged``: the share of the true answer's
  argmax tokens that did not move;
- bleed: the share of neighbours' / fixed unrelated prompts' continuations that newly contain the
  target;
- fluency: ROME's generation entropy of the continuations of the plain prompt and the neighbours,
  before and after (the summary reports the ratio);
- degenerate: the share of edits with a continuation (plain prompt or neighbour) that a reader
  would call broken: a loop (its bi/tri-gram entropy below :data:`LOOP_ENTROPY_RATIO` of the
  unedited continuation's) or word salad (the unedited model's mean NLL per token of it at least
  :data:`SALAD_NLL_GAIN` nats above that of the unedited continuation). A mean over many edits
  hides one broken edit in fifty; this counts it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources

from ..data.neighbours import Neighbour, NeighbourIndex
from ..data.records import EditRecord
from ..measuring.verdicts import CONTINUATION_TASKS, contains_answer


@lru_cache(maxsize=1)
def unrelated_prompts() -> tuple[str, ...]:
    """The fixed panel of unrelated facts (``instructedit/assets/unrelated_facts.json``)."""
    text = resources.files("instructedit").joinpath("assets/unrelated_facts.json").read_text()
    return tuple(json.loads(text)["prompts"])


@dataclass(frozen=True)
class PlainProbes:
    """The plain texts one record is measured on."""

    prompt: str
    rephrases: tuple[str, ...]
    neighbours: tuple[Neighbour, ...]
    unrelated: tuple[str, ...]
    continuations: bool  # generation-based metrics apply (short answers)


def plain_probes(record: EditRecord, index: NeighbourIndex | None, max_probes: int = 4,
                 seed: int = 0, unrelated: tuple[str, ...] | None = None) -> PlainProbes:
    """The record's plain prompt, rephrases, neighbours (data locality first, then same-template
    subjects from ``index``) and the unrelated panel."""
    neighbours: list[Neighbour] = [Neighbour(p.prompt.strip(), p.answer.strip(), "")
                                   for p in record.locality[:max_probes]]
    if index is not None:
        known = {n.prompt for n in neighbours}
        neighbours += [n for n in index.neighbours(record, max_probes, seed) if n.prompt not in known]
    neighbours = [n for n in neighbours if n.answer.lower() != record.target_new.strip().lower()]
    continuations = record.task in CONTINUATION_TASKS
    return PlainProbes(record.prompt.strip(), tuple(r.strip() for r in record.rephrases[:max_probes]),
                       tuple(neighbours),
                       (unrelated if unrelated is not None else unrelated_prompts()) if continuations else (),
                       continuations)


@dataclass(kw_only=True)
class PlainMeans:
    """The plain-protocol numbers of one edit, or their means over records (same names)."""

    plain_reliability: float | None = None
    plain_generalization: float | None = None
    generation_success: float | None = None
    neighbourhood_score: float | None = None
    neighbour_unchanged: float | None = None
    neighbour_bleed: float | None = None
    unrelated_bleed: float | None = None
    plain_fluency_pre: float | None = None
    plain_fluency: float | None = None
    degenerate: float | None = None


MEANS = tuple(f.name for f in fields(PlainMeans))


@dataclass(kw_only=True)
class PlainResult(PlainMeans):
    """The plain-protocol measurements of one edit (None where the record cannot have one) and
    the texts they were read from: the plain prompt's continuation before / after, and
    (prompt, before, after) of each neighbour."""

    plain_generation_pre: str | None = None
    plain_generation: str | None = None
    neighbour_generations: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(kw_only=True)
class PlainSummary(PlainMeans):
    """Means over records; ``fluency_ratio`` = fluency after / before."""

    fluency_ratio: float | None = None

    def fill(self, mean) -> None:
        """Set every mean with ``mean(name)`` and derive the fluency ratio."""
        for name in MEANS:
            setattr(self, name, mean(name))
        if self.plain_fluency is not None and self.plain_fluency_pre:
            self.fluency_ratio = self.plain_fluency / self.plain_fluency_pre


LOOP_ENTROPY_RATIO = 0.75
"""A continuation loops when its n-gram entropy falls below this share of the unedited one's
("Italy Italy, Italy Italy, ...": 0.41, " Ukraine; Ukraine; ...": 0.29; edited sentences that
read as sentences, on val CounterFact: about 0.8-1.25)."""
SALAD_NLL_GAIN = 2.5
"""A continuation is word salad when the unedited model reads it at least this many nats per token
less likely than its own continuation (" Madrid Madrid, the USA Madrid, ... Las que envía la": +4.8;
ordinary edited sentences: +0.2 to +1.9, the new fact included)."""


def degenerates(entropy_before: float, entropy_after: float, nll_before: float, nll_after: float) -> bool:
    """Whether an edited continuation reads as broken: a loop or word salad, each judged against
    the unedited continuation of the same prompt (see :data:`LOOP_ENTROPY_RATIO`,
    :data:`SALAD_NLL_GAIN`)."""
    loops = entropy_before > 0 and entropy_after < LOOP_ENTROPY_RATIO * entropy_before
    return loops or nll_after - nll_before >= SALAD_NLL_GAIN


def bleed(before: list[str], after: list[str], target: str) -> float | None:
    """Share of continuations that contain ``target`` after but not before."""
    if not after:
        return None
    newly = [contains_answer(a, target) and not contains_answer(b, target)
             for b, a in zip(before, after, strict=True)]
    return sum(newly) / len(newly)
