"""The four tasks' files in a data folder and their seeded, leak-free train/val/test splits.

Layout (relative to ``data_dir``, default ``data``)::

    counterfact/counterfact-train.json  counterfact-val.json  counterfact-edit.json
    counterfact/knowedit-train_cf.json  (optional extra training data)
    recent/recent_train.json            (split by subject 70/10/20)
    convsent/blender_val.json           (split by topic 90/10 into train/val)
    convsent/blender_test.json          (test)
    zsre/ZsRE-test-all.json             (held out: ~100 records carved by subject as val,
                                         the rest is test)

Training records that share a subject or prompt with the task's val or test split are removed
(deterministically, with a logged count). ``zsre`` has no training split.
"""
from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from instructedit.data.formats import convert_rows, load_records
from instructedit.data.io import read_rows
from instructedit.data.leakage import normalize, remove_leaks
from instructedit.data.records import EditRecord

from ..errors import UserFacingError
from ..instructions import BENCHMARK_TASKS, HELD_OUT_TASKS
from ..instructions import TRAINING_TASKS as TRAINING_TASKS  # re-exported: data.tasks.TRAINING_TASKS

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DATA_DIR = "data"
TASKS: tuple[str, ...] = BENCHMARK_TASKS  # from the one task registry (instructions.py)
SPLITS: tuple[str, ...] = ("train", "val", "test")

TASK_FILES: dict[str, dict[str, str]] = {
    "counterfact": {"train": "counterfact/counterfact-train.json",
                    "val": "counterfact/counterfact-val.json",
                    "test": "counterfact/counterfact-edit.json",
                    "extra_train": "counterfact/knowedit-train_cf.json"},
    "recent": {"all": "recent/recent_train.json"},
    "convsent": {"train_val": "convsent/blender_val.json", "test": "convsent/blender_test.json"},
    "zsre": {"all": "zsre/ZsRE-test-all.json"},
}
RECENT_FRACTIONS = (0.7, 0.1, 0.2)
CONVSENT_VAL_FRACTION = 0.1
ZSRE_VAL_RECORDS = 100  # at most; never more than 10% of the file


class SplitError(UserFacingError, ValueError):
    """An unknown task or split, a missing data file, or a request to train on ``zsre``."""


@dataclass(frozen=True)
class TaskSplits:
    """The three splits of one task, and how many leaking training records were removed."""

    task: str
    train: tuple[EditRecord, ...]
    val: tuple[EditRecord, ...]
    test: tuple[EditRecord, ...]
    removed_from_train: int = 0
    files: tuple[str, ...] = field(default=())

    def split(self, name: str) -> list[EditRecord]:
        """The records of split ``name`` (a new list)."""
        if name not in SPLITS:
            raise SplitError(f"unknown split {name!r}; choose one of {SPLITS}")
        return list(getattr(self, name))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise SplitError(f"unknown task {task!r}; choose one of {TASKS}")


def task_paths(data_dir: str | Path, task: str, include_knowedit: bool = False) -> list[Path]:
    """The files ``task`` reads from ``data_dir``."""
    _check_task(task)
    files = TASK_FILES[task]
    return [Path(data_dir) / rel for key, rel in files.items()
            if key != "extra_train" or include_knowedit]


def missing_files(data_dir: str | Path, tasks: Sequence[str] = TASKS,
                  include_knowedit: bool = False) -> list[Path]:
    """The files of ``tasks`` that are absent from ``data_dir``."""
    return [p for task in tasks for p in task_paths(data_dir, task, include_knowedit)
            if not p.is_file()]


def subject_key(record: EditRecord) -> str:
    """A record's group for splitting: its subject (its prompt when it has none)."""
    return record.subject or record.prompt


def group_split(items: Sequence[T], fractions: Sequence[float], seed: int,
                key: Callable[[T], str] = subject_key, salt: str = "") -> list[list[T]]:
    """Split ``items`` by group (``key``, normalized) into parts of the given fractions.

    Groups are sorted, shuffled with ``seed`` and cut by cumulative rounded counts, so every
    group lands in exactly one part and the result depends only on the records and the seed.
    """
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(normalize(key(item)), []).append(item)
    names = sorted(groups)
    random.Random(f"{salt}:{seed}").shuffle(names)
    total, start, acc = len(names), 0, 0.0
    parts: list[list[T]] = []
    for i, fraction in enumerate(fractions):
        acc += fraction
        end = total if i == len(fractions) - 1 else round(acc * total)
        parts.append([r for name in names[start:end] for r in groups[name]])
        start = end
    return parts


def _require(paths: Sequence[Path]) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SplitError(f"missing data file(s): {', '.join(missing)} (see docs/data.md for "
                         "where to get them and how to lay them out)")


def _counterfact(root: Path, seed: int, include_knowedit: bool):
    files = TASK_FILES["counterfact"]
    train = load_records(root / files["train"], task="counterfact")
    if include_knowedit:
        train += load_records(root / files["extra_train"], format="knowedit", task="counterfact",
                              drop_empty_probes=True)
    val = load_records(root / files["val"], task="counterfact")
    test = load_records(root / files["test"], task="counterfact")
    return train, val, test


def _recent(root: Path, seed: int, include_knowedit: bool):
    records = load_records(root / TASK_FILES["recent"]["all"], format="knowedit", task="recent",
                           drop_empty_probes=True)
    return tuple(group_split(records, RECENT_FRACTIONS, seed, salt="recent"))


def _convsent(root: Path, seed: int, include_knowedit: bool):
    path = root / TASK_FILES["convsent"]["train_val"]
    rows = read_rows(path)

    def topic(i: int) -> str:
        ent = rows[i].get("ent") if isinstance(rows[i], dict) else None
        return ent if isinstance(ent, str) and ent.strip() else f"row {i}"

    parts = group_split(range(len(rows)), (1 - CONVSENT_VAL_FRACTION, CONVSENT_VAL_FRACTION),
                        seed, key=topic, salt="convsent")
    split_records = []
    for part in parts:
        indices = sorted(part)
        split_records.append(convert_rows(rows, "convsent", name=path.name, task="convsent",
                                          seed=seed, select=indices, pool=indices))
    test = load_records(root / TASK_FILES["convsent"]["test"], format="convsent", task="convsent",
                        seed=seed)
    return split_records[0], split_records[1], test


def _zsre(root: Path, seed: int, include_knowedit: bool):
    records = load_records(root / TASK_FILES["zsre"]["all"], format="knowedit", task="zsre",
                           drop_empty_probes=True)
    groups: dict[str, list[EditRecord]] = {}
    for record in records:
        groups.setdefault(normalize(subject_key(record)), []).append(record)
    names = sorted(groups)
    random.Random(f"zsre:{seed}").shuffle(names)
    wanted = max(1, min(ZSRE_VAL_RECORDS, round(0.1 * len(records))))
    val_names: set[str] = set()
    count = 0
    for name in names:
        if count >= wanted:
            break
        val_names.add(name)
        count += len(groups[name])
    val = [r for r in records if normalize(subject_key(r)) in val_names]
    test = [r for r in records if normalize(subject_key(r)) not in val_names]
    return [], val, test


_BUILDERS = {"counterfact": _counterfact, "recent": _recent, "convsent": _convsent, "zsre": _zsre}


@functools.lru_cache(maxsize=8)
def _cached(root: str, task: str, seed: int, include_knowedit: bool,
            stamps: tuple[tuple[str, float, int], ...]) -> TaskSplits:
    train, val, test = _BUILDERS[task](Path(root), seed, include_knowedit)
    train, removed = remove_leaks(train, list(val) + list(test))
    if removed:
        log.info("%s: removed %d training record(s) sharing a subject or prompt with val/test",
                 task, removed)
    return TaskSplits(task=task, train=tuple(train), val=tuple(val), test=tuple(test),
                      removed_from_train=removed, files=tuple(s[0] for s in stamps))


def load_task(data_dir: str | Path, task: str, seed: int = 0, *,
              include_knowedit: bool = False) -> TaskSplits:
    """All splits of ``task`` read from ``data_dir`` (cached while the files are unchanged)."""
    paths = task_paths(data_dir, task, include_knowedit)
    _require(paths)
    stamps = tuple((str(p.resolve()), p.stat().st_mtime, p.stat().st_size) for p in paths)
    return _cached(str(Path(data_dir).resolve()), task, int(seed), bool(include_knowedit), stamps)


def load_split(data_dir: str | Path, task: str, split: str, seed: int = 0, *,
               include_knowedit: bool = False) -> list[EditRecord]:
    """The records of ``split`` (train/val/test) of ``task``, seeded and leak-free.

    ``include_knowedit`` adds ``counterfact/knowedit-train_cf.json`` to CounterFact training.
    Asking for ``zsre`` training data raises :class:`SplitError`: zsRE is held out.
    """
    _check_task(task)
    if split not in SPLITS:
        raise SplitError(f"unknown split {split!r}; choose one of {SPLITS}")
    if split == "train" and task in HELD_OUT_TASKS:
        raise SplitError(f"{task} is held out of training (never train on it); "
                         "use its 'val' or 'test' split")
    return load_task(data_dir, task, seed, include_knowedit=include_knowedit).split(split)
