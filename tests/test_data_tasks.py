"""Seeded, leak-free splits of the four tasks, on a miniature data folder."""
from __future__ import annotations

import pytest

from instructedit.data.leakage import check_task_leaks, keys_of
from instructedit.data.tasks import (
    SplitError,
    group_split,
    load_split,
    load_task,
    missing_files,
)
from tests.data.layout import make_data_dir


@pytest.fixture
def data_dir(tmp_path):
    return make_data_dir(tmp_path / "data")


def counts(data_dir, task, seed=0, **kw):
    splits = load_task(data_dir, task, seed, **kw)
    return len(splits.train), len(splits.val), len(splits.test)


def test_split_counts(data_dir):
    assert counts(data_dir, "counterfact") == (12, 4, 6)  # 15 training records, 3 leaked
    assert counts(data_dir, "counterfact", include_knowedit=True) == (15, 4, 6)
    assert counts(data_dir, "recent") == (14, 2, 4)        # 20 subjects, 70/10/20
    assert counts(data_dir, "convsent") == (36, 4, 10)     # 20 topics 90/10, x2 labels
    assert counts(data_dir, "zsre") == (0, 3, 27)          # 3 of 30 records as val


def test_counterfact_leaks_removed_from_train(data_dir):
    splits = load_task(data_dir, "counterfact")
    assert splits.removed_from_train == 3
    train_subjects = {r.subject for r in splits.train}
    assert "Sculptor 1" not in train_subjects and "Poet 2" not in train_subjects
    assert all(r.prompt != "Dancer 3 was born in" for r in splits.train)


@pytest.mark.parametrize("task", ["counterfact", "recent", "convsent", "zsre"])
def test_no_leak_between_training_and_evaluation(data_dir, task):
    splits = load_task(data_dir, task, seed=5)
    for report in check_task_leaks(task, {s: splits.split(s) for s in ("train", "val", "test")}):
        if "train" in (report.first, report.second):
            assert not report.leaks, report
    assert not keys_of(splits.train) & keys_of(splits.test + splits.val)


@pytest.mark.parametrize("task", ["recent", "convsent", "zsre"])
def test_splits_are_deterministic_and_seeded(data_dir, task):
    def ids(seed):
        s = load_task(data_dir, task, seed)
        return [r.id for r in s.train], [r.id for r in s.val], [r.id for r in s.test]
    first = ids(1)
    assert ids(1) == first
    assert any(ids(seed) != first for seed in (2, 3, 4))


def test_recent_split_by_subject(data_dir):
    splits = load_task(data_dir, "recent")
    subjects = [{r.subject for r in splits.split(s)} for s in ("train", "val", "test")]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    # probes without an answer are dropped (counted in a log), not the records
    assert all(len(r.locality) == 1 for r in splits.train)


def test_convsent_split_by_topic_with_local_locality(data_dir):
    splits = load_task(data_dir, "convsent")
    train_topics = {r.topic for r in splits.train}
    val_topics = {r.topic for r in splits.val}
    assert not train_topics & val_topics
    assert all(t.startswith("test topic") for t in {r.topic for r in splits.test})
    for record in splits.val:  # locality questions come from the same split's topics
        for probe in record.locality:
            assert any(topic in probe.prompt for topic in val_topics - {record.topic})
    assert {r.label for r in splits.train} == {"positive", "negative"}


def test_zsre_is_never_training_data(data_dir):
    with pytest.raises(SplitError, match="held out of training"):
        load_split(data_dir, "zsre", "train")
    val, test = load_split(data_dir, "zsre", "val"), load_split(data_dir, "zsre", "test")
    assert not {r.subject for r in val} & {r.subject for r in test}
    assert all(r.task == "zsre" for r in val + test)


def test_load_split_errors(data_dir, tmp_path):
    with pytest.raises(SplitError, match="unknown task"):
        load_split(data_dir, "wikibio", "test")
    with pytest.raises(SplitError, match="unknown split"):
        load_split(data_dir, "recent", "dev")
    with pytest.raises(SplitError, match="missing data file"):
        load_split(tmp_path / "empty", "recent", "test")
    assert len(missing_files(tmp_path / "empty")) == 7
    assert missing_files(data_dir, include_knowedit=True) == []


def test_load_split_returns_fresh_lists(data_dir):
    first = load_split(data_dir, "recent", "train")
    first.clear()
    assert len(load_split(data_dir, "recent", "train")) == 14


def test_group_split_keeps_groups_together():
    items = [f"g{i % 7}-{i}" for i in range(40)]
    parts = group_split(items, (0.5, 0.25, 0.25), seed=0, key=lambda s: s.split("-")[0])
    assert sum(len(p) for p in parts) == 40
    groups = [{s.split("-")[0] for s in p} for p in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert group_split(items, (0.5, 0.25, 0.25), 0, key=lambda s: s.split("-")[0]) == parts
