"""The ConvSent sentiment scorer: the shipped weights and the numpy trainer."""
from __future__ import annotations

import pytest

from instructedit.data.sentiment import DEFAULT_PATH, SentimentScorer, features, tokenize, train_scorer


def test_tokenize_and_features():
    assert tokenize("I don't LIKE it!") == ["i", "do", "not", "like", "it", "!"]
    assert {"not like", "like", "do not"} <= features("I don't like it")


def test_shipped_weights_are_small_and_sane():
    assert DEFAULT_PATH.is_file() and DEFAULT_PATH.stat().st_size < 300 * 1024
    scorer = SentimentScorer.load()
    assert scorer.meta["accuracy"]["test"] > 0.8
    for text in ("I love it, it is wonderful!", "I really like him, he is a great player.",
                 "It's a beautiful city and I enjoyed my visit."):
        assert scorer.label(text) == "positive", text
        assert scorer.score(text) > 0.7
    for text in ("I hate it, it is terrible.", "I'm not a fan.", "I don't like him at all."):
        assert scorer.label(text) == "negative", text
        assert scorer.score(text) < 0.3
    assert 0.0 <= scorer.score("") <= 1.0


def test_train_save_load_round_trip(tmp_path):
    pos = ["great fun", "I love it", "wonderful and great", "love this, so good", "good and fun"]
    neg = ["awful mess", "I hate it", "terrible and awful", "hate this, so bad", "bad and boring"]
    texts, labels = pos + neg, [1] * 5 + [0] * 5
    scorer = train_scorer(texts, labels, min_count=1, top_n=20, epochs=200)
    assert len(scorer.weights) <= 20
    assert scorer.accuracy(texts, labels) == 1.0
    assert scorer.label("so much fun, I love it") == "positive"
    assert scorer.label("boring and bad") == "negative"
    loaded = SentimentScorer.load(scorer.save(tmp_path / "lex.json"))
    assert loaded.score("great fun") == pytest.approx(scorer.score("great fun"), abs=1e-3)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="rebuild"):
        SentimentScorer.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a"):
        SentimentScorer.load(tmp_path / "other.json")
    with pytest.raises(ValueError):
        train_scorer([], [])
