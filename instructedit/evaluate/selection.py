"""The records an evaluation runs on: a file in any format, or a task's split of a data folder."""
from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

from ..data.formats import load_records
from ..data.records import EditRecord
from ..data.tasks import load_split
from ..errors import UserFacingError

log = logging.getLogger(__name__)


class SelectionError(UserFacingError, ValueError):
    """The data to evaluate cannot be found or read."""


def load_eval_records(data: str | Path, task: str | None = None, split: str = "test",
                      seed: int = 0) -> list[EditRecord]:
    """Records of a file (format auto-detected; ``task`` overrides the inferred task) or of
    ``task``'s ``split`` in a data folder (seeded, leak-free, see :mod:`instructedit.data.tasks`)."""
    path = Path(data)
    if path.is_dir():
        if not task:
            raise SelectionError(f"{path} is a data folder: pass --task (counterfact, recent, "
                                 "convsent or zsre)")
        return load_split(path, task, split, seed)
    if not path.is_file():
        raise SelectionError(f"no such data file or folder: {path}")
    return load_records(path, task=task)


def limit_records(records: Sequence[EditRecord], limit: int | None, seed: int = 0) -> list[EditRecord]:
    """A seeded sample of ``limit`` records, in their original order (all when ``limit`` is None).

    Samples are nested: with the same seed, a smaller limit picks a subset of a larger one.
    """
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 1:
        raise SelectionError(f"--limit must be at least 1, got {limit}")
    order = list(range(len(records)))
    random.Random(f"eval-sample:{seed}").shuffle(order)
    chosen = sorted(order[:limit])
    return [records[i] for i in chosen]
