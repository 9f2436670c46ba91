"""Leakage between splits: records that share a subject or a prompt."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from instructedit.data.records import EditRecord


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive key for comparing subjects and prompts."""
    return " ".join(text.casefold().split())


def record_keys(record: EditRecord) -> set[str]:
    """The keys a record is compared by: ``subject:<subject>`` and ``prompt:<prompt>``."""
    keys = {"prompt:" + normalize(record.prompt)}
    if record.subject.strip():
        keys.add("subject:" + normalize(record.subject))
    return keys


def keys_of(records: Iterable[EditRecord]) -> set[str]:
    """The union of :func:`record_keys` over ``records``."""
    out: set[str] = set()
    for record in records:
        out |= record_keys(record)
    return out


def remove_leaks(records: Sequence[EditRecord], against: Iterable[EditRecord]
                 ) -> tuple[list[EditRecord], int]:
    """``records`` without those sharing a subject or prompt with ``against``; and how many went."""
    banned = keys_of(against)
    kept = [r for r in records if not (record_keys(r) & banned)]
    return kept, len(records) - len(kept)


@dataclass(frozen=True)
class LeakReport:
    """Subjects and prompts shared between two splits of one task."""

    task: str
    first: str
    second: str
    shared_subjects: int
    shared_prompts: int
    examples: tuple[str, ...] = ()

    @property
    def leaks(self) -> bool:
        return bool(self.shared_subjects or self.shared_prompts)


def compare_splits(task: str, first: str, a: Sequence[EditRecord], second: str,
                   b: Sequence[EditRecord], max_examples: int = 3) -> LeakReport:
    """What ``a`` (split ``first``) and ``b`` (split ``second``) share."""
    shared = sorted(keys_of(a) & keys_of(b))
    subjects = [k for k in shared if k.startswith("subject:")]
    prompts = [k for k in shared if k.startswith("prompt:")]
    return LeakReport(task, first, second, len(subjects), len(prompts),
                      tuple(shared[:max_examples]))


def check_task_leaks(task: str, splits: Mapping[str, Sequence[EditRecord]]) -> list[LeakReport]:
    """Pairwise reports for every pair of non-empty splits of ``task`` (train/val/test order)."""
    names = [n for n in ("train", "val", "test") if splits.get(n)]
    names += [n for n in splits if n not in names and splits[n]]
    return [compare_splits(task, x, splits[x], y, splits[y])
            for i, x in enumerate(names) for y in names[i + 1:]]
