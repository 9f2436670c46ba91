"""The shipped example edits (``instructedit/assets/examples.json``): a few test-split records per task.

The file is a JSON list of canonical records, so ``load_records`` reads it too. Rebuild it
from a data folder with::

    python -m instructedit data examples --data data --out instructedit/assets/examples.json
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from instructedit.data.formats import load_records
from instructedit.data.records import EditRecord
from instructedit.data.tasks import load_split

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "assets" / "examples.json"

# Test-split records chosen for well-known subjects (CounterFact, ConvSent) or short answers.
EXAMPLE_IDS: dict[str, tuple[str, ...]] = {
    "counterfact": ("counterfact-edit/4664", "counterfact-edit/16781", "counterfact-edit/12489",
                    "counterfact-edit/16575", "counterfact-edit/3047", "counterfact-edit/1876"),
    "recent": ("recent_train/51", "recent_train/124", "recent_train/392", "recent_train/242",
               "recent_train/469"),
    "convsent": ("Jules Verne/positive", "Gordon Ramsay/negative",
                 "Teenage Mutant Ninja Turtles/positive", "comic books/negative",
                 "Madagascar/positive"),
    "zsre": ("ZsRE-test-all/28", "ZsRE-test-all/30", "ZsRE-test-all/5", "ZsRE-test-all/12",
             "ZsRE-test-all/2"),
}
MAX_PROBES = 2
MAX_TEXTS = 2
_KEPT_EXTRA = ("source_format", "case_id", "source_index")


def _shortest(texts: Sequence[str], n: int, keep: str | None = None) -> tuple[str, ...]:
    """``keep`` (if among ``texts``) followed by the shortest others, ``n`` in all."""
    head = [keep] if keep in texts else []
    rest = sorted((t for t in texts if t != keep), key=len)
    return tuple(head + rest)[:n]


def slim(record: EditRecord) -> EditRecord:
    """A small copy of ``record``: at most 2 probes and rephrases, the target and the shortest
    responses (2 of each sentiment), and little extra."""
    return dataclasses.replace(
        record,
        rephrases=record.rephrases[:MAX_PROBES],
        locality=record.locality[:MAX_PROBES],
        portability=record.portability[:MAX_PROBES],
        responses=_shortest(record.responses, MAX_TEXTS, record.target_new),
        opposite_responses=_shortest(record.opposite_responses, MAX_TEXTS),
        extra={k: record.extra[k] for k in _KEPT_EXTRA if k in record.extra},
    )


def compact_dict(record: EditRecord) -> dict:
    """``record.to_dict()`` without empty optional fields (``from_dict`` restores them)."""
    required = ("id", "task", "prompt", "target_new")
    return {k: v for k, v in record.to_dict().items()
            if k in required or v not in (None, "", [], (), {})}


def select_examples(data_dir: str | Path, seed: int = 0) -> list[EditRecord]:
    """The :data:`EXAMPLE_IDS` records from each task's test split, slimmed."""
    chosen: list[EditRecord] = []
    for task, ids in EXAMPLE_IDS.items():
        test = load_split(data_dir, task, "test", seed)
        if task == "convsent":
            by_id = {f"{r.topic}/{r.label}": r for r in test}
        else:
            by_id = {r.id: r for r in test}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"{task}: example(s) not in the test split: {missing}")
        chosen.extend(slim(by_id[i]) for i in ids)
    return chosen


def load_examples(task: str | None = None, path: str | Path | None = None) -> list[EditRecord]:
    """The shipped example edits, optionally only those of ``task``."""
    records = load_records(path or DEFAULT_PATH, format="canonical")
    return [r for r in records if task is None or r.task == task]


def write_examples(data_dir: str | Path, out: str | Path = DEFAULT_PATH) -> tuple[Path, int]:
    """Rebuild the examples file from ``data_dir``'s test splits; returns (path, count)."""
    records = select_examples(data_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(compact_dict(r), ensure_ascii=False) for r in records)
    out.write_text(f"[\n{lines}\n]\n", encoding="utf-8")
    return out, len(records)
