"""The task mixer: determinism, instruction indices, ConvSent share, zsRE refused."""
from __future__ import annotations

from collections import Counter

import pytest

from instructedit.data.mixing import iter_mixed, mix_tasks, task_weights
from instructedit.data.records import EditRecord


def records(task, n):
    extra = {"topic": f"t{task}", "label": "positive"} if task == "convsent" else {}
    return [EditRecord(id=f"{task}/{i}", task=task, prompt=f"{task} prompt {i}", target_new="x",
                       **extra) for i in range(n)]


@pytest.fixture
def pools():
    return {"counterfact": records("counterfact", 50), "recent": records("recent", 7),
            "convsent": records("convsent", 500)}


def test_deterministic_for_a_seed(pools):
    a = mix_tasks(pools, 300, seed=4)
    assert a == mix_tasks(pools, 300, seed=4)
    assert a != mix_tasks(pools, 300, seed=5)
    assert [(r.id, i) for r, i in a[:3]] == [(x.record.id, x.instruction_index) for x in a[:3]]


def test_dict_order_does_not_matter(pools):
    reordered = dict(reversed(list(pools.items())))
    assert mix_tasks(pools, 100, seed=1) == mix_tasks(reordered, 100, seed=1)


def test_instruction_indices_are_the_seen_set(pools):
    counts = Counter(i for _, i in mix_tasks(pools, 3000, seed=0))
    assert set(counts) == set(range(9))
    assert min(counts.values()) > 3000 / 9 * 0.7


def test_convsent_share_is_capped(pools):
    two = {"counterfact": pools["counterfact"], "convsent": pools["convsent"]}
    stream = mix_tasks(two, 6000, seed=0, convsent_share=0.2)
    share = sum(r.task == "convsent" for r, _ in stream) / len(stream)
    assert 0.17 < share < 0.23
    # default cap 1/3 (uniform over 2 tasks would give 1/2)
    stream = mix_tasks(two, 6000, seed=0)
    assert 0.30 < sum(r.task == "convsent" for r, _ in stream) / 6000 < 0.37
    # no cap: uniform over tasks although ConvSent has 10x the records
    stream = mix_tasks(two, 6000, seed=0, convsent_share=None)
    assert 0.46 < sum(r.task == "convsent" for r, _ in stream) / 6000 < 0.54
    assert task_weights(["counterfact", "convsent", "recent"], 0.9)["convsent"] == pytest.approx(1 / 3)


def test_each_record_is_seen_once_per_pass(pools):
    stream = mix_tasks({"recent": pools["recent"]}, 14, seed=2)
    first, second = stream[:7], stream[7:]
    assert sorted(r.id for r, _ in first) == sorted(r.id for r in pools["recent"])
    assert sorted(r.id for r, _ in second) == sorted(r.id for r in pools["recent"])


def test_refuses_zsre_and_empty_input(pools):
    with pytest.raises(ValueError, match="held out"):
        mix_tasks({**pools, "zsre": records("zsre", 3)}, 10)
    with pytest.raises(ValueError, match="held-out records"):
        mix_tasks({"counterfact": records("zsre", 3)}, 10)
    with pytest.raises(ValueError, match="at least one task"):
        mix_tasks({"recent": []}, 10)
    with pytest.raises(ValueError, match="convsent_share"):
        mix_tasks(pools, 10, convsent_share=1.5)


def test_iter_mixed_is_endless(pools):
    stream = iter_mixed({"recent": pools["recent"]}, seed=0)
    assert len([next(stream) for _ in range(100)]) == 100
    assert mix_tasks(pools, 0) == []
