"""Same-template neighbours: the edit prompt's sentence with another subject and its true answer.

An edit of "The mother tongue of Danielle Darrieux is" -> "English" must not make "The mother
tongue of Michel Rocard is" say English. Such prompts are the hardest locality probes (ROME's
neighbourhood prompts share the relation; these share the very template). They come from other
records of the same data: a record's template is its prompt with its subject cut out.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .records import EditRecord

SUBJECT_SLOT = "{}"


def template_of(record: EditRecord) -> str | None:
    """The record's prompt with its subject replaced by ``{}`` (None without a usable subject)."""
    subject = (record.subject or "").strip()
    if not subject or record.prompt.count(subject) != 1:
        return None
    return record.prompt.strip().replace(subject, SUBJECT_SLOT)


def true_answer(record: EditRecord) -> str | None:
    """What the unedited world says: the ground truth, or for Recent (new facts that are true) the
    target itself."""
    if record.ground_truth and record.ground_truth.strip():
        return record.ground_truth.strip()
    if record.task == "recent":
        return record.target_new.strip()
    return None


@dataclass(frozen=True)
class Neighbour:
    """A prompt about another subject and that subject's true answer."""

    prompt: str
    answer: str
    subject: str


class NeighbourIndex:
    """Records grouped by template, to find same-template neighbours of an edit."""

    def __init__(self, records: Sequence[EditRecord]) -> None:
        self._by_template: dict[str, list[EditRecord]] = defaultdict(list)
        for record in records:
            template = template_of(record)
            if template is not None and true_answer(record) is not None:
                self._by_template[template].append(record)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_template.values())

    def neighbours(self, record: EditRecord, k: int, seed: int | str = 0,
                   prompt: str | None = None, subject: str | None = None,
                   target: str | None = None) -> list[Neighbour]:
        """Up to ``k`` seeded neighbours of ``record`` (or of ``prompt``/``subject``/``target``):
        other subjects in the same template whose true answer is not the new target."""
        prompt = (prompt or record.prompt).strip()
        subject = (subject or record.subject or "").strip()
        target = (target or record.target_new).strip().lower()
        if not subject or prompt.count(subject) != 1:
            return []
        template = prompt.replace(subject, SUBJECT_SLOT)
        seen: set[str] = set()
        pool = []
        for other in self._by_template.get(template, ()):
            answer = true_answer(other)
            name = other.subject.strip()
            if name == subject or name in seen or answer is None or answer.lower() == target:
                continue
            seen.add(name)
            pool.append(Neighbour(other.prompt.strip(), answer, name))
        rng = random.Random(f"neighbours:{seed}:{record.id}")
        return rng.sample(pool, min(k, len(pool)))
