"""A small sentiment scorer for ConvSent evaluation (no downloads, no model).

A bag-of-words (unigrams + bigrams, binary) logistic regression trained with numpy on the
positive/negative responses of the ConvSent *training* split (topics of
``convsent/blender_val.json`` outside the validation topics). Only the ``top_n`` features with
the largest weights are kept, so the weights ship as a small JSON file
(``instructedit/assets/sentiment_lexicon.json``). Scoring is pure Python.

Rebuild::

    python -m instructedit data lexicon --data data --out instructedit/assets/sentiment_lexicon.json
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructedit.data.tasks import load_split

log = logging.getLogger(__name__)

FORMAT = "instructedit-sentiment-v1"
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "assets" / "sentiment_lexicon.json"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")
_NEGATED = re.compile(r"n't\b")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; ``n't`` becomes ``not``; ``!`` and ``?`` are kept."""
    text = _NEGATED.sub(" not", text.lower().replace("\u2019", "'"))
    return _TOKEN.findall(text)


def features(text: str) -> set[str]:
    """Binary features of ``text``: its unigrams and bigrams (``"not like"``)."""
    tokens = tokenize(text)
    return set(tokens) | {f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)}


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    z = math.exp(x)
    return z / (1 + z)


@dataclass
class SentimentScorer:
    """``score(text)`` = P(positive) under a bag-of-words logistic regression."""

    weights: dict[str, float]
    bias: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, text: str) -> float:
        """The probability that ``text`` is positive."""
        w = self.weights
        return _sigmoid(self.bias + sum(w.get(f, 0.0) for f in features(text)))

    def label(self, text: str, threshold: float = 0.5) -> str:
        """``"positive"`` or ``"negative"``."""
        return "positive" if self.score(text) >= threshold else "negative"

    def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> float:
        """Share of ``texts`` whose label (1 = positive) is predicted correctly."""
        if not texts:
            return 0.0
        hits = sum((self.score(t) >= 0.5) == bool(y) for t, y in zip(texts, labels, strict=True))
        return hits / len(texts)

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.weights.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        return {"format": FORMAT, "bias": round(self.bias, 4), **self.meta,
                "weights": {k: round(v, 4) for k, v in ordered}}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0) + "\n",
                        encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path | None = None) -> SentimentScorer:
        """Load saved weights (default: the shipped ``instructedit/assets/sentiment_lexicon.json``)."""
        path = Path(path) if path is not None else DEFAULT_PATH
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no sentiment weights; rebuild them with "
                                    "python -m instructedit data lexicon --data data --out "
                                    f"{path}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        meta = {k: v for k, v in data.items() if k not in ("format", "bias", "weights")}
        return cls(weights={str(k): float(v) for k, v in data["weights"].items()},
                   bias=float(data["bias"]), meta=meta)


def train_scorer(texts: Sequence[str], labels: Sequence[int], *, top_n: int = 6000,
                 l2: float = 3e-5, epochs: int = 300, lr: float = 0.1, min_count: int = 2
                 ) -> SentimentScorer:
    """Fit the logistic regression (full-batch Adam, L2) on ``texts`` with 0/1 ``labels``.

    Features seen in fewer than ``min_count`` texts are ignored; after a first fit only the
    ``top_n`` features with the largest absolute weights are kept and the model is refit.
    """
    import numpy as np

    if len(texts) != len(labels) or not texts:
        raise ValueError("texts and labels must be non-empty and of equal length")
    docs = [features(t) for t in texts]
    counts = Counter(f for d in docs for f in d)
    vocab = sorted(f for f, c in counts.items() if c >= min_count)
    y = np.asarray(labels, dtype=np.float64)

    def fit(vocab: list[str]) -> tuple[np.ndarray, float]:
        index = {f: i for i, f in enumerate(vocab)}
        rows, cols = [], []
        for r, d in enumerate(docs):
            for f in d:
                if f in index:
                    rows.append(r)
                    cols.append(index[f])
        rows_a, cols_a = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        n, v = len(docs), len(vocab)
        params = np.zeros(v + 1)
        m, s = np.zeros(v + 1), np.zeros(v + 1)
        for step in range(1, epochs + 1):
            w, b = params[:v], params[v]
            logits = np.bincount(rows_a, weights=w[cols_a], minlength=n) + b
            err = 1 / (1 + np.exp(-logits)) - y
            grad = np.empty(v + 1)
            grad[:v] = np.bincount(cols_a, weights=err[rows_a], minlength=v) / n + l2 * w
            grad[v] = err.mean()
            m = 0.9 * m + 0.1 * grad
            s = 0.999 * s + 0.001 * grad * grad
            params -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(s / (1 - 0.999 ** step)) + 1e-8)
        return params[:v], float(params[v])

    w, b = fit(vocab)
    if len(vocab) > top_n:
        keep = np.argsort(-np.abs(w), kind="stable")[:top_n]
        vocab = sorted(vocab[i] for i in keep)
        w, b = fit(vocab)
    weights = {f: float(x) for f, x in zip(vocab, w, strict=True) if abs(x) >= 5e-5}
    return SentimentScorer(weights=weights, bias=b,
                           meta={"features": "binary unigrams+bigrams", "l2": l2,
                                 "epochs": epochs, "top_n": top_n, "train_texts": len(texts)})


def labelled_responses(records: Iterable[Any]) -> tuple[list[str], list[int]]:
    """(texts, 0/1 labels) from ConvSent records: each topic's responses, once per label."""
    texts: list[str] = []
    labels: list[int] = []
    seen: set[tuple[str, str]] = set()
    for record in records:
        key = (record.extra.get("source_index", record.id), record.label)
        if record.label is None or key in seen:
            continue
        seen.add(key)
        texts.extend(record.responses)
        labels.extend([1 if record.label == "positive" else 0] * len(record.responses))
    return texts, labels


def build(data_dir: str | Path, out: str | Path | None, *, seed: int = 0, top_n: int = 6000,
          l2: float = 3e-5) -> tuple[SentimentScorer, dict[str, float]]:
    """Train on the ConvSent train split, measure val and test accuracy, save to ``out``."""
    train = labelled_responses(load_split(data_dir, "convsent", "train", seed))
    val = labelled_responses(load_split(data_dir, "convsent", "val", seed))
    test = labelled_responses(load_split(data_dir, "convsent", "test", seed))
    scorer = train_scorer(*train, top_n=top_n, l2=l2)
    acc = {"train": scorer.accuracy(*train), "val": scorer.accuracy(*val),
           "test": scorer.accuracy(*test)}
    scorer.meta.update({
        "trained_on": "convsent train split (blender_val.json minus val topics), seed "
                      f"{seed}",
        "accuracy": {k: round(v, 4) for k, v in acc.items()},
        "test_texts": len(test[0]),
    })
    if out is not None:
        scorer.save(out)
    return scorer, acc
