"""The blast radius of an edit: what else it changed, probed automatically after every edit.

Three groups of probes (:class:`BlastPlanner` builds them; :func:`measure_blast` measures them,
batched: one generation call before the edit and one after, one teacher-forced pass each):

- neighbours: the edit's own sentence with other subjects of the same kind. For a sentence of the
  data (the app's examples come from the test splits), its same-template records with their true
  answers (:class:`~instructedit.data.neighbours.NeighbourIndex`, as in the evaluation); otherwise
  the subject swapped for others from the built-in list of its kind;
- facts: other facts about the same subject (a few templates per kind);
- unrelated: the evaluation's fixed panel of unrelated facts.

Each probe's continuation stops at the end of its first sentence (the verdicts read no further),
before and after the edit in one generation call.

A probe counts as changed when its verdict is not "same answer"
(:mod:`instructedit.measuring.verdicts`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.neighbours import NeighbourIndex
from ..data.records import EditRecord, RecordError
from ..data.tasks import SplitError, load_split
from ..editing.editor import EditRequest
from ..editing.patches import Patch
from ..evaluate.plain import unrelated_prompts
from ..instructions import get_task
from ..measuring.probing import GenerationCache, Probe, ProbeResult, measure_probes
from ..measuring.verdicts import NOW_SAYS
from ..model.backbone import Backbone
from .subjects import Catalog, default_catalog, guess_subject

log = logging.getLogger(__name__)

NEIGHBOUR = "neighbour"
FACT = "fact"
UNRELATED = "unrelated"
GROUPS = (NEIGHBOUR, FACT, UNRELATED)
AUTO_KIND = "auto"
NEIGHBOUR_TASKS = ("counterfact", "recent", "zsre")
"""Tasks whose test records give same-template neighbours (ConvSent's have no true answer)."""


@dataclass(frozen=True)
class BlastPlan:
    """The probes of one edit's blast radius and where they came from."""

    subject: str
    kind: str
    source: str
    probes: tuple[Probe, ...]


@dataclass(frozen=True)
class GroupCount:
    """How many probes of a group changed (and how many of them now say the target)."""

    changed: int
    total: int
    now_say_target: int


@dataclass(frozen=True)
class BlastRadius:
    """The measured probes of one edit's blast radius."""

    subject: str
    kind: str
    source: str
    target: str
    probes: tuple[ProbeResult, ...]

    def group(self, name: str) -> tuple[ProbeResult, ...]:
        return tuple(p for p in self.probes if p.group == name)

    def count(self, name: str) -> GroupCount:
        rows = self.group(name)
        return GroupCount(changed=sum(not p.unchanged for p in rows), total=len(rows),
                          now_say_target=sum(p.verdict.startswith(NOW_SAYS) for p in rows))


class BlastPlanner:
    """Builds the blast radius probes of an edit.

    Args:
        catalog: kinds of subject with comparable subjects and fact templates (the shipped one
            by default).
        indexes: same-template neighbour indexes per task (from the data's test splits), if the
            app has the data.
        neighbours, facts: most probes of these groups.
        unrelated: the unrelated panel (the evaluation's by default).
    """

    def __init__(self, catalog: Catalog | None = None, indexes: Mapping[str, NeighbourIndex] | None = None,
                 neighbours: int = 6, facts: int = 4, unrelated: Sequence[str] | None = None) -> None:
        self.catalog = catalog or default_catalog()
        self.indexes = dict(indexes or {})
        self.neighbours = neighbours
        self.facts = facts
        self.unrelated = tuple(unrelated if unrelated is not None else unrelated_prompts())

    def subject_of(self, request: EditRequest) -> str:
        """The request's subject (ConvSent: its topic), else a guess from its prompt."""
        return (request.subject or request.topic or guess_subject(request.prompt) or "").strip()

    def kind_of(self, subject: str, prompt: str, kind: str | None = None) -> str:
        """``kind`` if it is a known kind, else a guess."""
        if kind and kind in self.catalog.names:
            return kind
        return self.catalog.guess_kind(subject, prompt)

    def _data_neighbours(self, request: EditRequest, subject: str) -> tuple[list[Probe], str]:
        if not self.indexes:
            return [], ""
        order = sorted(self.indexes, key=lambda task: task != request.task)
        record = EditRecord(id=f"studio:{request.prompt}", task="custom", prompt=request.prompt,
                            target_new=request.target, subject=subject)
        for task in order:
            found = self.indexes[task].neighbours(record, self.neighbours, prompt=request.prompt.strip(),
                                                  subject=subject, target=request.target)
            if found:
                probes = [Probe(n.prompt, NEIGHBOUR, n.answer) for n in found]
                return probes, f"same-template records of the {get_task(task).display_name} test data"
        return [], ""

    def _listed_neighbours(self, request: EditRequest, subject: str, kind: str) -> list[Probe]:
        spec = self.catalog.get(kind)
        prompt = request.prompt.strip()
        others = [s for s in spec.subjects if s.lower() != subject.lower() and s.lower() not in prompt.lower()]
        return [Probe(prompt.replace(subject, other), NEIGHBOUR) for other in others[: self.neighbours]]

    def plan(self, request: EditRequest, kind: str | None = None) -> BlastPlan:
        """The probes of ``request``'s blast radius (``kind``: the user's choice, or guessed)."""
        subject = self.subject_of(request)
        kind = self.kind_of(subject, request.prompt, kind)
        prompt = request.prompt.strip()
        probes: list[Probe] = []
        source = "no subject found in the prompt to swap (type one)"
        if subject and subject in prompt:
            probes, source = self._data_neighbours(request, subject)
            if not probes:
                probes = self._listed_neighbours(request, subject, kind)
                source = f"built-in list of {self.catalog.get(kind).label}"
        if subject:
            facts = [t.format(subject) for t in self.catalog.get(kind).facts]
            probes += [Probe(f, FACT) for f in facts if f.strip().lower() != prompt.lower()][: self.facts]
        probes += [Probe(p, UNRELATED) for p in self.unrelated if p.strip().lower() != prompt.lower()]
        return BlastPlan(subject, kind, source, tuple(probes))


def measure_blast(backbone: Backbone, before: Sequence[Patch], after: Sequence[Patch], plan: BlastPlan,
                  target: str, *, max_new_tokens: int, cache: GenerationCache | None = None,
                  says_target: bool = True) -> BlastRadius:
    """Measure ``plan``'s probes with ``before`` and with ``after`` active."""
    results = measure_probes(backbone, before, after, plan.probes, target, max_new_tokens=max_new_tokens,
                             cache=cache, says_target=says_target, first_sentence=True)
    return BlastRadius(plan.subject, plan.kind, plan.source, target, results)


def load_neighbour_indexes(data_dir: str | Path | None, tasks: Sequence[str] = NEIGHBOUR_TASKS,
                           split: str = "test") -> dict[str, NeighbourIndex]:
    """Same-template neighbour indexes over the test split of each task found in ``data_dir``
    (the records the app's examples come from); tasks whose files are missing are skipped."""
    indexes: dict[str, NeighbourIndex] = {}
    if data_dir is None or not Path(data_dir).is_dir():
        log.info("no data folder at %s: the blast radius uses the built-in subject lists", data_dir)
        return indexes
    for task in tasks:
        try:
            index = NeighbourIndex(load_split(data_dir, task, split))
        except (SplitError, RecordError, OSError, ValueError) as exc:
            log.info("blast radius: no %s neighbours (%s)", task, exc)
            continue
        if len(index):
            indexes[task] = index
    log.info("blast radius: same-template neighbours from %s", ", ".join(indexes) or "no task")
    return indexes
