"""Data statistics and the ``data stats`` command on a miniature data folder."""
from __future__ import annotations

import argparse
import json

import pytest

from instructedit.cli import data as data_cli
from instructedit.data import tasks
from instructedit.data.stats import compute_stats, token_counter
from tests.data.layout import make_data_dir


@pytest.fixture
def data_dir(tmp_path):
    return make_data_dir(tmp_path / "data")


def run_cli(argv):
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def by_key(stats):
    return {(s.task, s.split): s for s in stats.splits}


def test_counts_and_lengths_without_tokenizer(data_dir):
    stats = compute_stats(data_dir)
    table = by_key(stats)
    assert table["counterfact", "train"].records == 12
    assert table["recent", "test"].records == 4
    assert table["convsent", "val"].records == 4 and table["convsent", "val"].subjects == 2
    assert ("zsre", "train") not in table and table["zsre", "val"].records == 3
    assert table["zsre", "test"].answer_length.mean == 2.0  # "the sea": two words
    assert table["zsre", "test"].portability_probes == 27
    assert stats.length_unit == "words"
    assert stats.removed_from_train == {"counterfact": 3}
    assert stats.leak is False and stats.held_out_in_training == 0


def test_tokenizer_callables():
    assert token_counter(None)(" two words") == 2
    assert token_counter(lambda text: list(text.strip()))(" abc") == 3
    assert token_counter(lambda text: {"input_ids": [1, 2]})("x") == 2

    class FakeHF:
        def encode(self, text, add_special_tokens=True):
            return [0] * (len(text.split()) + (1 if add_special_tokens else 0))
    assert token_counter(FakeHF())(" a b c") == 3


def test_tokenizer_is_used(data_dir):
    stats = compute_stats(data_dir, tokenizer=lambda text: list(text), tasks=["zsre"])
    assert stats.length_unit == "tokens"
    assert by_key(stats)["zsre", "val"].answer_length.max == len(" the sea")


def test_cli_table_and_json(data_dir, capsys):
    assert run_cli(["data", "stats", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "counterfact train" in " ".join(out.split()) and "leakage: none" in out
    assert run_cli(["data", "stats", "--data", str(data_dir), "--json", "--tasks", "recent"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["leak"] is False
    assert [(s["task"], s["split"], s["records"]) for s in payload["splits"]] == [
        ("recent", "train", 14), ("recent", "val", 2), ("recent", "test", 4)]


def test_cli_exit_codes_on_leak_and_missing_data(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tasks, "remove_leaks", lambda records, against: (list(records), 0))
    tasks._cached.cache_clear()
    try:
        stats = compute_stats(data_dir, tasks=["counterfact"])
        assert stats.leak and stats.training_leaks
        assert run_cli(["data", "stats", "--data", str(data_dir), "--tasks", "counterfact"]) == 1
        assert "leakage: FOUND" in capsys.readouterr().out
    finally:
        tasks._cached.cache_clear()
    assert run_cli(["data", "stats", "--data", str(tmp_path / "missing")]) == 2
    assert "missing data file" in capsys.readouterr().err


def test_cli_reports_unloadable_tokenizer(data_dir, tmp_path, capsys):
    code = run_cli(["data", "stats", "--data", str(data_dir), "--tokenizer-model",
                    str(tmp_path / "no-such-model")])
    assert code == 2
    assert "cannot load tokenizer" in capsys.readouterr().err
