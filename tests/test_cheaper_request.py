"""A cheaper edit request (the class-on-one-machine issue, item 2), on the tiny models:

- continuations cut at their first sentence (the blast radius), by the verdicts' own rule, and
  the decoder dropping rows that have stopped (their KV cache, mask and per-row edits included);
- before and after an edit generated in one call (each row under its own stack) and scored in one
  teacher-forced pass, with the figures of separate calls;
- the unedited model's rows of a batch kept server-wide under the batch's padded width only;
- the studio's edit request in fewer generation calls.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import instructedit.measuring.probing as probing
from instructedit.editing.editor import Editor, EditRequest
from instructedit.editing.patches import Patch, PatchEngine, stack_patches
from instructedit.measuring.probing import (
    GenerationCache,
    Probe,
    UneditedTexts,
    generate_jobs,
    generate_under,
    measure_probes,
)
from instructedit.measuring.verdicts import first_sentence
from instructedit.model.adapters import adapter_for, contiguous_head_input
from instructedit.model.backbone import load_backbone
from instructedit.model.decoding import greedy_new_tokens, live_rows
from instructedit.model.generation import GenerationConfig, _left_padded, generate
from instructedit.model.sentences import first_sentence_of, sentence_ended
from instructedit.serving.batcher import GenerationBatcher, request_rows_patch
from instructedit.web.config import Limits
from instructedit.web.service import EditService

PROMPTS = ["The Eiffel Tower is located in", "Paris is the capital of", "The sky is",
           "A longer prompt about the city of Rome and its history, which"]


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def edits(llama) -> list[Patch]:
    editor = Editor.untrained(llama, step_size=0.5)
    return [editor.edit(EditRequest(PROMPTS[0], target)).patch for target in ("Rome", "Berlin")]


# ----- first sentences ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, cut", [
    (" Paris. It is the capital.", " Paris."),
    (" Paris, France! And more", " Paris, France!"),
    (" about 3.5 million people. Next", " about 3.5 million people."),
    (" the U.S. and Canada", " the U.S."),  # an abbreviation ends a sentence too (the verdicts' rule)
    (" Rome\nRome Rome", " Rome"),
    ("\n\nThe city of Paris.\nNext", "\n\nThe city of Paris."),
    (" no end at all", " no end at all"),
    ("", ""),
])
def test_first_sentence_is_cut_by_the_verdicts_rule(text, cut):
    assert first_sentence_of(text) == cut
    assert first_sentence(first_sentence_of(text)) == first_sentence(text)  # what the verdicts read


def test_the_stop_test_waits_for_the_token_after_a_full_stop(llama):
    done = sentence_ended(llama.tokenizer)

    def says(text: str) -> bool:
        return done(0, llama.tokenizer(text, add_special_tokens=False)["input_ids"])

    assert not says(" Paris.")          # "3." could still become "3.5"
    assert says(" Paris. It")
    assert not says(" about 3.5")
    assert says(" Rome\nRome")
    assert not says("\n")               # a leading line break is not a sentence
    assert not says(" no end")


# ----- the decoder drops stopped rows --------------------------------------------------------------
def _stop_after(counts: dict[int, int]):
    def done(row: int, tokens: list[int]) -> bool:
        return len(tokens) >= counts.get(row, 10 ** 6)

    return done


def _decode(backbone, texts, tokens, row_done=None):
    enc = _left_padded(backbone.tokenizer, texts, True, backbone.device)
    return greedy_new_tokens(backbone.model, enc["input_ids"], enc["attention_mask"], tokens,
                             backbone.tokenizer.pad_token_id, row_done=row_done)


@pytest.mark.parametrize("stack", ["none", "one edit", "rows of two requests", "batched"])
def test_pruned_rows_keep_their_tokens_and_their_own_edits(llama, edits, stack):
    texts = PROMPTS
    patch = {"none": None, "one edit": edits[0],
             "rows of two requests": request_rows_patch([(2, [edits[0]]), (2, [edits[1]])]),
             "batched": stack_patches([edits[0], edits[1], edits[0], edits[1]])}[stack]
    seen: list[list[int] | None] = []  # the rows each forward ran on, as the decoder told them
    hook = llama.model.get_submodule(adapter_for(llama.model).block_name(0)).register_forward_hook(
        lambda module, args, out: seen.append(None if live_rows() is None else live_rows().tolist()))
    try:
        with PatchEngine.activate(patch):
            full = _decode(llama, texts, 8)
            pruned = _decode(llama, texts, 8, _stop_after({0: 2, 2: 5}))
    finally:
        hook.remove()
    pad = llama.tokenizer.pad_token_id
    assert pruned.shape == full.shape
    assert torch.equal(pruned[0, :2], full[0, :2]) and (pruned[0, 2:] == pad).all()
    assert torch.equal(pruned[2, :5], full[2, :5]) and (pruned[2, 5:] == pad).all()
    assert torch.equal(pruned[1], full[1]) and torch.equal(pruned[3], full[3])
    assert seen[8:] == [None, None, [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 3], [1, 3], [1, 3]]
    assert live_rows() is None  # only inside the decoder's forwards


def test_first_sentence_generation_equals_the_full_text_cut(llama):
    full = generate(llama, PROMPTS, GenerationConfig(max_new_tokens=10))
    first = generate(llama, PROMPTS, GenerationConfig(max_new_tokens=10, first_sentence=True))
    assert first == [first_sentence_of(t) for t in full]


@pytest.mark.slow
def test_first_sentences_on_the_real_model_stop_early_and_keep_the_edit():
    """The embedded model in 4 bit (the studio's route): rows that end a sentence stop early, every
    text is the full continuation cut at its first sentence, and each row keeps its own edit."""
    backbone = load_backbone("smollm2-135m", "4bit", device="cpu", fast_4bit=True)
    editor = Editor.untrained(backbone, step_size=1.0)
    edit = editor.edit(EditRequest("The capital of France is", "Rome")).patch
    prompts = ["The capital of France is", "The Eiffel Tower is located in", "Water is made of",
               "The largest planet in the solar system is"]
    jobs = [([], prompts), ([edit], prompts)]
    full = generate_jobs(backbone, jobs, 20)
    first = generate_jobs(backbone, jobs, 20, first_sentence=True)
    for whole, cut in zip(full, first, strict=True):
        for prompt in prompts:
            assert cut[prompt] == first_sentence_of(whole[prompt]), prompt
    assert sum(len(cut[p]) < len(whole[p]) for cut, whole in zip(first, full, strict=True) for p in prompts) >= 2
    assert full[0] != full[1]  # the edited rows differ from the unedited ones


@pytest.mark.parametrize("quant", ["4bit", "none"])
def test_a_contiguous_head_input_keeps_the_logits(tiny_llama_dir, quant):
    """The prompt pass's last hidden state is a strided view; a 16-bit head reads it contiguous
    (bitwise the same logits, without the slow strided bf16 path), a float32 head as it is."""
    backbone = load_backbone(str(tiny_llama_dir), quant, device="cpu")
    enc = _left_padded(backbone.tokenizer, PROMPTS, True, backbone.device)
    with torch.no_grad():
        plain = backbone.model(**enc, logits_to_keep=1).logits
        contiguous_head_input(backbone.model)
        contiguous_head_input(backbone.model)  # once per model
        head = backbone.model.get_output_embeddings()
        assert len(head._forward_pre_hooks) == 1
        seen = []
        probe = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
        hooked = backbone.model(**enc, logits_to_keep=1).logits
        probe.remove()
    assert torch.equal(plain, hooked)
    assert seen == [head.weight.dtype != torch.float32]


# ----- before and after in one call --------------------------------------------------------------
def _count_calls(monkeypatch) -> list[int]:
    rows: list[int] = []
    real = probing.generate

    def counted(backbone, texts, config=None):
        rows.append(len(texts))
        return real(backbone, texts, config)

    monkeypatch.setattr(probing, "generate", counted)
    return rows


def test_jobs_run_as_one_call_with_each_stack_on_its_rows(llama, edits, monkeypatch):
    texts = PROMPTS[:3]
    separate = [generate_under(llama, stack, texts, 6) for stack in ([], [edits[0]], [edits[0], edits[1]])]
    rows = _count_calls(monkeypatch)
    together = generate_jobs(llama, [([], texts), ([edits[0]], texts), ([edits[0], edits[1]], texts)], 6)
    assert rows == [9]
    assert together == separate
    assert together[0] != together[1]  # the edit shows


def test_unedited_batch_rows_are_read_back_only_at_their_width(llama, edits, monkeypatch):
    store = UneditedTexts()
    texts = PROMPTS[:3]
    first = generate_jobs(llama, [([], texts), ([edits[0]], texts)], 6, GenerationCache(store),
                          first_sentence=True)
    rows = _count_calls(monkeypatch)
    again = generate_jobs(llama, [([], texts), ([edits[1]], texts)], 6, GenerationCache(store),
                          first_sentence=True)
    assert rows == [3] and again[0] == first[0]  # only the new edit's rows ran
    # a call padded to another width generates its unedited rows again
    generate_jobs(llama, [([], texts), ([edits[1]], PROMPTS)], 6, GenerationCache(store), first_sentence=True)
    assert rows == [3, 7]
    # through a batcher, rows that might meet other requests' rows are not kept
    other = UneditedTexts()
    with GenerationBatcher(llama, window_ms=0, max_rows=16) as batcher, batcher.client():
        generate_jobs(llama, [([], texts), ([edits[0]], texts)], 6, GenerationCache(other))
    assert len(other) == 0


def test_probes_scored_before_and_after_in_one_pass_match_two_passes(llama, edits, monkeypatch):
    probes = [Probe(PROMPTS[1], "locality"), Probe(PROMPTS[2], "neighbour", "blue"),
              Probe(PROMPTS[0], "prompt")]
    reference = measure_probes(llama, [], [edits[0]], probes, "Rome", max_new_tokens=6,
                               agreement_groups=("locality",))
    two_passes = probing._answer_logits_before_after
    monkeypatch.setattr(probing, "_answer_logits_before_after", lambda b, pre, post, batch: (
        probing._answer_logits(b, pre, batch), probing._answer_logits(b, post, batch)))
    separate = measure_probes(llama, [], [edits[0]], probes, "Rome", max_new_tokens=6,
                              agreement_groups=("locality",))
    monkeypatch.setattr(probing, "_answer_logits_before_after", two_passes)
    for one, two in zip(reference, separate, strict=True):
        assert (one.before, one.after, one.verdict, one.answer) == (two.before, two.after, two.verdict, two.answer)
        for field in ("p_target_before", "p_target_after", "p_answer_before", "p_answer_after", "agreement"):
            a, b = getattr(one, field), getattr(two, field)
            assert (a is None) == (b is None) and (a is None or abs(a - b) < 1e-5), field
    assert any(abs(math.log(r.p_target_after / r.p_target_before)) > 1e-3 for r in reference)  # the edit acts


def test_the_next_editor_reads_the_probes_logits_before_the_edit(llama, edits, monkeypatch):
    probes = [Probe(PROMPTS[1], "unrelated"), Probe(PROMPTS[2], "unrelated")]
    cache = GenerationCache()
    measure_probes(llama, [], [edits[0]], probes, "Rome", max_new_tokens=4, cache=cache)
    passes: list[int] = []
    real = probing._answer_logits
    monkeypatch.setattr(probing, "_answer_logits",
                        lambda b, stack, batch: passes.append(batch.size) or real(b, stack, batch))
    second = measure_probes(llama, [], [edits[1]], probes, "Rome", max_new_tokens=4, cache=cache)
    fresh = measure_probes(llama, [], [edits[1]], probes, "Rome", max_new_tokens=4)
    assert passes[0] * 2 == passes[1]  # the second editor ran only its after half
    assert [r.p_target_after for r in second] == pytest.approx([r.p_target_after for r in fresh], abs=1e-5)


# ----- the studio's request ----------------------------------------------------------------------
def test_an_edit_request_makes_three_generation_calls(llama, tmp_path, monkeypatch):
    main = Editor.untrained(llama, step_size=0.5)
    base = Editor.untrained(llama, step_size=0.5, use_instructions=False)
    service = EditService(llama, main, base, Limits(max_new_tokens=6), export_dir=tmp_path)
    request = EditRequest(PROMPTS[0], "Rome", task="counterfact", instruction=0,
                          rephrases=("The Eiffel Tower is in",), probes=("The capital of France is",))
    calls: list[tuple[int, tuple[bool, ...]]] = []
    real = probing.generate

    def counted(backbone, texts, config=None):
        calls.append((len(texts), config.sentence_rows(len(texts))))
        return real(backbone, texts, config)

    monkeypatch.setattr(probing, "generate", counted)
    outcome = service.edit("cheap", request, on_update=lambda partial: None)
    # the first look: the prompt before and after alone (the Playground's texts); then one call
    # for both editors' probes and blast radius, before and after
    assert [rows for rows, _ in calls[:2]] == [1, 1] and len(calls) == 3
    rows, cut = calls[2]
    blast = outcome.report.blast
    probes = len(blast.probes)
    assert sum(cut) == 3 * probes  # the blast radius before, after InstructEdit, after the baseline
    assert rows - sum(cut) >= 2 * 4  # every report's texts in full (the baseline's prompt included)
    for probe in (*blast.probes, *outcome.baseline_report.blast.probes):
        assert probe.before == first_sentence_of(probe.before) and probe.after == first_sentence_of(probe.after)
    assert outcome.baseline_report.prompt.after and outcome.report.rephrases[0].after
    # the same request with the reports measured one editor at a time gives the same report
    calls.clear()
    monkeypatch.setattr(EditService, "_generate_shown", lambda self, *args: None)
    again = EditService(llama, main, base, Limits(max_new_tokens=6), export_dir=tmp_path).edit(
        "cheap", request, on_update=lambda partial: None)
    assert len(calls) > 3
    for one, two in ((outcome.report, again.report), (outcome.baseline_report, again.baseline_report)):
        assert [(p.before, p.after, p.verdict) for p in (one.prompt, *one.rephrases, *one.probes)] == \
            [(p.before, p.after, p.verdict) for p in (two.prompt, *two.rephrases, *two.probes)]
        assert [(p.before, p.after) for p in one.blast.probes] == [(p.before, p.after) for p in two.blast.probes]
        assert one.scores.to_dict() == pytest.approx(two.scores.to_dict(), abs=1e-5)


def test_the_request_profile_tool_times_the_parts(tmp_path):
    from tests import request_profile

    out = tmp_path / "profile.json"
    assert request_profile.main(["--tiny", "--records", "2", "--warmup", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["calls"]["generate"] == 3 and row["rows"]["generate"] > 2
        assert 0 < row["first_look_s"] <= row["total_s"]
        assert 0 < sum(row["seconds"].values()) <= row["total_s"]
        assert {"generate", "teacher_forced"} <= set(row["seconds"])
    assert result["summary"]["requests"] == 2
    # the load page shows it (make load)
    from tests import load_table

    section = "\n".join(load_table.profile_section(result))
    assert "| whole request |" in section and "| generate |" in section and "| teacher-forced |" in section
