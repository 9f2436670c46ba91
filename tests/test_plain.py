"""The plain protocol (what a user sees): its metrics on hand-made cases and on tiny models."""
from __future__ import annotations

import pytest
import torch

from instructedit.data.neighbours import NeighbourIndex, template_of, true_answer
from instructedit.data.records import EditRecord, LocalityProbe
from instructedit.editing.editor import Editor
from instructedit.evaluate import EvalConfig, Evaluator
from instructedit.evaluate.metrics import ngram_entropy
from instructedit.evaluate.plain import bleed, contains_answer, degenerates, plain_probes, unrelated_prompts
from instructedit.model.backbone import load_backbone
from instructedit.scoring import (
    answer_batch_from_ids,
    full_model_answer_logits,
    score_answers,
    tokenize_answers,
)


def cf(i: int, subject: str, truth: str, target: str = "English",
       template: str = "The mother tongue of {} is") -> EditRecord:
    return EditRecord(id=f"r{i}", task="counterfact", prompt=template.format(subject), subject=subject,
                      target_new=target, ground_truth=truth, rephrases=(f"{subject} grew up speaking",),
                      locality=(LocalityProbe("The capital of France is", "Paris"),))


RECORDS = [cf(0, "Danielle Darrieux", "French"), cf(1, "Michel Rocard", "French"),
           cf(2, "Thomas Mann", "German"), cf(3, "Ian Fleming", "English"),
           cf(4, "Mario Monti", "Italian", template="{} was born in the country of")]


# ----- hand-made cases -------------------------------------------------------------------------
def test_contains_answer_matches_whole_words_only():
    assert contains_answer(" the city of Rome, Italy.", "Rome")
    assert contains_answer("ROME is big", "rome")
    assert not contains_answer(" a Romeo and Juliet play", "Rome")
    assert contains_answer("speaks C++ well", "C++")
    assert not contains_answer("anything", "  ")


def test_repetition_has_lower_entropy_than_normal_text():
    normal = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."
    loop = "Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome"
    assert ngram_entropy(loop) < 0.2 * ngram_entropy(normal)


def test_degenerates_tells_loops_and_word_salad_from_an_ordinary_edited_sentence():
    # (entropy before, after; unedited model's NLL per token before, after) of real continuations
    # of the 4-bit SmolLM2 after edits (docs/training.md, "Passes until the edit holds")
    loop = (3.75, 1.55, 0.80, 1.14)      # "Italy Italy, Italy Italy, Italy, ..."
    salad = (4.00, 3.85, 0.90, 5.74)     # " Madrid Madrid, the USA Madrid, ... Las que envía la"
    ordinary = (3.74, 3.94, 0.85, 1.82)  # " Rome, Italy.\n\nThe Eiffel Tower is a historic Roman landmark ..."
    assert degenerates(*loop) and degenerates(*salad)
    assert not degenerates(*ordinary)
    assert not degenerates(0.0, 0.0, 1.0, 1.0)  # too short to loop, as likely as before


def test_bleed_counts_only_new_mentions():
    before = ["in Paris.", "Rome is old", "Berlin"]
    after = ["in Rome.", "Rome is old", "Berlin"]
    assert bleed(before, after, "Rome") == pytest.approx(1 / 3)
    assert bleed([], [], "Rome") is None


def test_neighbour_index_finds_same_template_subjects_with_other_answers():
    index = NeighbourIndex(RECORDS)
    assert template_of(RECORDS[0]) == "The mother tongue of {} is"
    found = index.neighbours(RECORDS[0], k=10)
    names = {n.subject for n in found}
    # not itself, not the other template, not a subject whose true answer is the new target
    assert names == {"Michel Rocard", "Thomas Mann"}
    assert all(n.prompt == f"The mother tongue of {n.subject} is" for n in found)
    assert index.neighbours(RECORDS[0], k=1) == index.neighbours(RECORDS[0], k=1)  # seeded
    assert len(index.neighbours(RECORDS[0], k=1)) == 1


def test_true_answer_of_recent_is_its_target():
    recent = EditRecord(id="x", task="recent", prompt="The spouse of A B is", subject="A B", target_new="C D")
    assert true_answer(recent) == "C D"
    assert true_answer(RECORDS[0]) == "French"


def test_plain_probes_put_data_locality_first_and_skip_convsent_continuations():
    probes = plain_probes(RECORDS[0], NeighbourIndex(RECORDS), max_probes=4)
    assert probes.neighbours[0].prompt == "The capital of France is"
    assert probes.unrelated == unrelated_prompts() and len(probes.unrelated) >= 4
    sent = EditRecord(id="s", task="convsent", prompt="What do you think of tea?", target_new="I love it.",
                      topic="tea", label="positive")
    assert plain_probes(sent, None).continuations is False


# ----- on a tiny model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


def config(**kw) -> EvalConfig:
    return EvalConfig(progress=False, batch_size=3, generation_tokens=6, sentiment=False, **kw)


def test_unedited_model_has_no_bleed_and_its_own_neighbourhood_score(backbone):
    result = Evaluator(backbone, None, config(), neighbour_pool=RECORDS).run(RECORDS[:2])
    s = result.summary
    assert s.neighbour_bleed == 0 and s.unrelated_bleed == 0
    assert s.plain_fluency == pytest.approx(s.plain_fluency_pre)
    assert s.neighbour_unchanged == 1.0
    assert s.degenerate == 0.0
    # NS recomputed by hand for the first record: P(true) > P(target) by mean NLL per token
    probes = plain_probes(RECORDS[0], NeighbourIndex(RECORDS), 4)
    prompts = [n.prompt for n in probes.neighbours]
    tok = backbone.tokenizer
    true_b = tokenize_answers(tok, prompts, [n.answer for n in probes.neighbours])
    new_b = tokenize_answers(tok, prompts, ["English"] * len(prompts))
    with torch.no_grad():
        nll_true = score_answers(full_model_answer_logits(backbone.model, true_b), true_b).mean_nll
        nll_new = score_answers(full_model_answer_logits(backbone.model, new_b), new_b).mean_nll
    expected = float((nll_true < nll_new).float().mean())
    assert result.records[0].neighbourhood_score == pytest.approx(expected, abs=1e-6)


def test_plain_scores_equal_wrapped_ones_when_the_editor_reads_plain_text(backbone):
    editor = Editor.untrained(backbone, step_size=3.0)
    result = Evaluator(backbone, editor, config(instruction=None), neighbour_pool=RECORDS).run(RECORDS)
    for r in result.records:
        assert r.plain_reliability == pytest.approx(r.reliability, abs=1e-6)
        assert r.plain_generalization == pytest.approx(r.generalization, abs=1e-6)
        assert r.generation_success == float(contains_answer(r.plain_generation, "English"))
        assert 0.0 <= r.neighbourhood_score <= 1.0
    # a large step moves things: the edited continuations differ from the unedited ones somewhere
    assert any(r.plain_generation != r.plain_generation_pre for r in result.records)


def unedited_nll(backbone, prompt: str, continuation: str) -> float:
    tok = backbone.tokenizer
    batch = answer_batch_from_ids([tok(prompt)["input_ids"]], [tok(continuation, add_special_tokens=False)["input_ids"]],
                                  tok.pad_token_id or 0)
    with torch.no_grad():
        return float(score_answers(full_model_answer_logits(backbone.model, batch), batch).mean_nll[0])


def test_degenerate_counts_each_edit_whose_changed_continuations_loop_or_turn_to_salad(backbone):
    editor = Editor.untrained(backbone, step_size=3.0)
    result = Evaluator(backbone, editor, config(instruction=None), neighbour_pool=RECORDS).run(RECORDS)
    for record, r in zip(RECORDS, result.records, strict=True):
        texts = [(record.prompt.strip(), r.plain_generation_pre, r.plain_generation), *r.neighbour_generations]
        expected = any(not after.strip() or degenerates(ngram_entropy(before), ngram_entropy(after),
                                                        unedited_nll(backbone, prompt, before),
                                                        unedited_nll(backbone, prompt, after))
                       for prompt, before, after in texts if after != before)
        assert r.degenerate == float(expected)
    assert result.summary.degenerate == pytest.approx(sum(r.degenerate for r in result.records) / len(RECORDS))
