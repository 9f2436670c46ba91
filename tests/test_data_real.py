"""Checks on the real data folder (``data`` at the repository root); skipped where it is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

from instructedit.data.examples import EXAMPLE_IDS, load_examples
from instructedit.data.tasks import missing_files

REAL = Path(__file__).resolve().parents[1] / "data"

needs_real_data = pytest.mark.skipif(bool(missing_files(REAL, include_knowedit=True)),
                                     reason="the real data folder is not laid out at ./data")

EXPECTED = {  # (train, val, test) with seed 0
    "counterfact": (9219, 1919, 10000),
    "recent": (399, 57, 114),
    "convsent": (1438, 160, 1600),
    "zsre": (0, 101, 1203),
}


def test_shipped_examples_are_valid_and_small():
    from instructedit.data.examples import DEFAULT_PATH

    assert DEFAULT_PATH.stat().st_size < 20 * 1024
    examples = load_examples()
    for task, ids in EXAMPLE_IDS.items():
        chosen = load_examples(task)
        assert 4 <= len(chosen) <= 6 and len(chosen) == len(ids)
        assert all(r.locality and r.task == task for r in chosen)
    assert len(examples) == sum(len(v) for v in EXAMPLE_IDS.values())


@pytest.mark.slow
@needs_real_data
def test_real_split_counts_and_no_leakage():
    from instructedit.data.stats import compute_stats

    stats = compute_stats(REAL, seed=0)
    got = {}
    for s in stats.splits:
        got.setdefault(s.task, {})[s.split] = s.records
    for task, (train, val, test) in EXPECTED.items():
        assert got[task].get("train", 0) == train, task
        assert (got[task]["val"], got[task]["test"]) == (val, test), task
    assert not stats.leak, stats.format_text()
    assert stats.held_out_in_training == 0


@pytest.mark.slow
@needs_real_data
def test_examples_come_from_real_test_splits():
    from instructedit.data.examples import select_examples

    assert select_examples(REAL) == load_examples()
