"""A seeded stream of training records drawn from several tasks, each with an instruction index.

At each step a task is drawn (uniformly, except that ConvSent's probability is capped by
``convsent_share``: the InstructEdit paper shows that keeping ConvSent from dominating the
mix helps), then the task's next record in a seeded shuffled order (reshuffled after each
pass), then an instruction index uniformly from the seen set (0..8 by default).
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

from instructedit.data.records import EditRecord
from instructedit.data.tasks import HELD_OUT_TASKS

SEEN_INSTRUCTION_INDICES: tuple[int, ...] = tuple(range(9))
DEFAULT_CONVSENT_SHARE = 1 / 3


class MixedExample(NamedTuple):
    """One training step's record and the index of the instruction to wrap it with."""

    record: EditRecord
    instruction_index: int


def task_weights(tasks: Sequence[str], convsent_share: float | None) -> dict[str, float]:
    """Sampling probability of each task: uniform, ConvSent capped at ``convsent_share``."""
    if not tasks:
        return {}
    uniform = 1 / len(tasks)
    if convsent_share is None or "convsent" not in tasks or len(tasks) == 1:
        return {t: uniform for t in tasks}
    if not 0 <= convsent_share <= 1:
        raise ValueError(f"convsent_share must be in [0, 1], got {convsent_share}")
    share = min(convsent_share, uniform)
    rest = (1 - share) / (len(tasks) - 1)
    return {t: share if t == "convsent" else rest for t in tasks}


def _check(records_by_task: Mapping[str, Sequence[EditRecord]]) -> list[str]:
    tasks = sorted(t for t, records in records_by_task.items() if records)
    if not tasks:
        raise ValueError("mix_tasks needs at least one task with records")
    for task in tasks:
        if task in HELD_OUT_TASKS:
            raise ValueError(f"{task} is held out of training; do not mix it into training")
        held = [r.id for r in records_by_task[task] if r.task in HELD_OUT_TASKS]
        if held:
            raise ValueError(f"task {task!r} holds held-out records, e.g. {held[0]!r}")
    return tasks


def iter_mixed(records_by_task: Mapping[str, Sequence[EditRecord]], seed: int = 0,
               convsent_share: float | None = DEFAULT_CONVSENT_SHARE,
               instruction_indices: Sequence[int] = SEEN_INSTRUCTION_INDICES
               ) -> Iterator[MixedExample]:
    """An endless, deterministic (for a seed) stream of :class:`MixedExample`."""
    tasks = _check(records_by_task)
    if not instruction_indices:
        raise ValueError("instruction_indices must not be empty")
    weights = task_weights(tasks, convsent_share)
    rng = random.Random(f"mix:{seed}")
    pools = {t: list(records_by_task[t]) for t in tasks}
    orders: dict[str, list[int]] = {t: [] for t in tasks}
    live = [t for t in tasks if weights[t] > 0]
    cum = list(itertools.accumulate(weights[t] for t in live))
    while True:
        task = rng.choices(live, cum_weights=cum)[0]
        if not orders[task]:
            orders[task] = list(range(len(pools[task])))
            rng.shuffle(orders[task])
        record = pools[task][orders[task].pop()]
        yield MixedExample(record, rng.choice(instruction_indices))


def mix_tasks(records_by_task: Mapping[str, Sequence[EditRecord]], steps_or_count: int,
              seed: int = 0, convsent_share: float | None = DEFAULT_CONVSENT_SHARE,
              instruction_indices: Sequence[int] = SEEN_INSTRUCTION_INDICES
              ) -> list[MixedExample]:
    """The first ``steps_or_count`` items of :func:`iter_mixed` (``(record, index)`` tuples).

    Tasks are drawn uniformly, ConvSent with probability at most ``convsent_share`` (``None``:
    no cap); zsRE (held out) is refused.
    """
    if steps_or_count < 0:
        raise ValueError(f"steps_or_count must be >= 0, got {steps_or_count}")
    return list(itertools.islice(iter_mixed(records_by_task, seed, convsent_share,
                                            instruction_indices), steps_or_count))
