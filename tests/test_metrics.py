"""Metrics on hand-made cases where the right value is known."""
from __future__ import annotations

import math

import pytest
import torch

from instructedit.evaluate.metrics import RecordResult, mean_or_none, ngram_entropy, summarize
from instructedit.scoring import AnswerBatch, agreement, kl_per_row, score_answers


def _batch(rows: list[int], tokens: list[int]) -> AnswerBatch:
    n = max(rows) + 1
    return AnswerBatch(torch.zeros((n, 4), dtype=torch.long), torch.ones((n, 4), dtype=torch.long),
                       torch.tensor(rows), torch.tensor(range(len(rows))), torch.tensor(tokens), [1] * n)


def _logits(argmax: list[int], vocab: int = 5) -> torch.Tensor:
    logits = torch.zeros(len(argmax), vocab)
    for i, a in enumerate(argmax):
        logits[i, a] = 5.0
    return logits


def test_token_accuracy_of_known_logits():
    # row 0: answers [1, 2, 3], predictions [1, 2, 0] -> 2/3; row 1: answer [4], predicted 4 -> 1
    batch = _batch([0, 0, 0, 1], [1, 2, 3, 4])
    scores = score_answers(_logits([1, 2, 0, 4]), batch)
    assert scores.token_accuracy.tolist() == pytest.approx([2 / 3, 1.0])
    assert scores.argmax.tolist() == [1, 2, 0, 4]


def test_log_prob_and_nll_of_uniform_logits():
    batch = _batch([0, 0, 1], [1, 2, 3])
    scores = score_answers(torch.zeros(3, 4), batch)
    assert scores.log_prob.tolist() == pytest.approx([2 * math.log(0.25), math.log(0.25)])
    assert scores.mean_nll.tolist() == pytest.approx([math.log(4), math.log(4)])


def test_agreement_is_one_without_change_and_counts_flips():
    batch = _batch([0, 0, 1, 1], [0, 0, 0, 0])
    pre = torch.tensor([1, 2, 3, 4])
    assert agreement(pre, pre.clone(), batch).tolist() == [1.0, 1.0]
    assert agreement(pre, torch.tensor([1, 0, 0, 0]), batch).tolist() == [0.5, 0.0]


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    batch = _batch([0, 1], [0, 0])
    logits = torch.randn(2, 6)
    assert kl_per_row(logits, logits, batch).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    shifted = logits.clone()
    shifted[1, 0] += 3
    kl = kl_per_row(logits, shifted, batch)
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 0.01


def test_mean_or_none_skips_missing_values():
    assert mean_or_none([None, 1.0, 0.0]) == 0.5
    assert mean_or_none([None, None]) is None
    assert mean_or_none([]) is None


def test_ngram_entropy_is_low_for_repetition():
    assert ngram_entropy("") == 0.0
    assert ngram_entropy("the the the the the the") == pytest.approx(0.0)
    varied = ngram_entropy("I really like this band, their songs are great and the singer is warm.")
    assert varied > 2.0


def _result(**kw) -> RecordResult:
    base = dict(id="r", task="counterfact", instruction="0", reliability=1.0, reliability_pre=0.0,
                target_logprob_pre=math.log(0.1), target_logprob_post=math.log(0.4))
    base.update(kw)
    return RecordResult(**base)


def test_summarize_averages_present_values_per_record():
    results = [_result(reliability=1.0, generalization=0.5, locality=1.0, latency_ms=10.0),
               _result(reliability=0.5, generalization=None, locality=0.0, latency_ms=30.0)]
    s = summarize(results, seconds=2.0)
    assert s.n == 2 and s.task == "counterfact"
    assert s.reliability == pytest.approx(0.75)
    assert s.generalization == pytest.approx(0.5)          # the record without rephrases is left out
    assert s.locality == pytest.approx(0.5)
    assert s.portability is None                           # no record has portability
    assert s.target_prob_lift == pytest.approx(math.log(4))  # post/pre probability ratio 4
    assert s.target_prob_pre == pytest.approx(0.1) and s.target_prob_post == pytest.approx(0.4)
    assert s.edit_latency_ms == pytest.approx(20.0)
    assert s.counts == {"generalization": 1, "locality": 2, "portability": 0, "sentiment_success": 0,
                        "neighbourhood_score": 0}
    assert s.sentiment_success is None and s.kl_drawdown is None


def test_summarize_convsent_extras_and_mixed_tasks():
    results = [_result(task="convsent", sentiment_success=1.0, locality_kl=0.2, fluency=4.0),
               _result(task="convsent", sentiment_success=0.0, locality_kl=0.4, fluency=2.0),
               _result(task="zsre", locality_kl=9.0)]
    s = summarize(results, seconds=1.0)
    assert s.task == "mixed"
    assert s.sentiment_success == pytest.approx(0.5)
    assert s.kl_drawdown == pytest.approx(0.3)            # ConvSent records only
    assert s.fluency == pytest.approx(3.0)
    assert s.locality_kl == pytest.approx((0.2 + 0.4 + 9.0) / 3)
