"""Gradio-free pieces of the app: diffs, verdicts, subject and kind guesses, tables, the blast radius
chart, pages, start-up fallbacks, the command line."""
from __future__ import annotations

from pathlib import Path

import pytest

import app as app_module
from instructedit.editing.checkpoint import CheckpointError
from instructedit.measuring.probing import ProbeResult
from instructedit.measuring.single import EditReport, EditScores
from instructedit.measuring.verdicts import CHANGED, SAME_ANSWER, same_answer, verdict
from instructedit.model.backbone import load_backbone
from instructedit.web.blast import BlastRadius
from instructedit.web.charts import blast_chart
from instructedit.web.config import AppConfig, Limits, cpu_threads
from instructedit.web.diff import ADDED, REMOVED, word_diff
from instructedit.web.forms import EditForm, build_request, kind_choice, kind_options, subject_for
from instructedit.web.loading import (
    LoadedModels,
    compared_editors,
    load_app_editor,
    load_rome,
    resolve_quant,
    status_line,
)
from instructedit.web.pages import MISSING_RESULTS, diagram_html, load_results
from instructedit.web.subjects import default_catalog, guess_subject
from instructedit.web.tracing_view import trace_markdown
from instructedit.web.views import (
    HISTORY_HEADERS,
    blast_cell,
    blast_markdown,
    blast_summary,
    blast_table,
    history_headers,
    history_table,
    history_widths,
    instruction_label,
    paper_summary,
    probe_table,
    rephrase_table,
    report_summary,
    teacher_forced,
    wrapped_table,
)


def test_word_diff_marks_changed_words_only():
    before, after = word_diff(" basketball player and coach", " soccer player and coach")
    assert "".join(t for t, _ in before) == " basketball player and coach"
    assert "".join(t for t, _ in after) == " soccer player and coach"
    assert before[0] == (" basketball", REMOVED) and after[0] == (" soccer", ADDED)
    assert before[1] == (" player and coach", None)
    assert word_diff("", "") == ([], [])
    assert word_diff("same", "same") == ([("same", None)], [("same", None)])


def row(prompt, before, after, verdict_, group="locality", answer=None, known=False, pa=(None, None),
        pt=(0.0, 0.0), acc=0.0, agree=None) -> ProbeResult:
    return ProbeResult(prompt, group, before, after, verdict_, answer, known, pa[0], pa[1], pt[0], pt[1], acc,
                       agree)


def _blast() -> BlastRadius:
    return BlastRadius("Michael Jordan", "person", "built-in list of people", "soccer", (
        row("Lionel Messi is a professional", " footballer.", " footballer.", SAME_ANSWER, "neighbour",
            "footballer", pa=(0.6, 0.55), pt=(0.01, 0.02)),
        row("Taylor Swift is a professional", " singer", " soccer player", "now says soccer", "neighbour",
            "singer", pa=(0.5, 0.1), pt=(0.0, 0.7)),
        row("Michael Jordan was born in", " Brooklyn", " Chicago", CHANGED, "fact", "Brooklyn"),
        row("The capital of Germany is", " Berlin.", " Berlin.", SAME_ANSWER, "unrelated", "Berlin"),
    ))


def _report() -> EditReport:
    prompt = row("Michael Jordan is a professional", " basketball player", " soccer player", "now says soccer",
                 "prompt", "basketball", pa=(0.61, 0.02), pt=(2e-5, 0.93), acc=1.0)
    wrapped = row("Task: x\nDescription: y\nInput: p", " basketball", " soccer", "now says soccer", "wrapped",
                  "soccer", True, pa=(2e-5, 0.93), pt=(2e-5, 0.93), acc=1.0)
    return EditReport(
        editor="e", target="soccer", prompt=prompt,
        rephrases=(row("r", " a", " soccer", "now says soccer", "rephrase", "soccer", True, pt=(0.01, 0.5),
                       pa=(0.01, 0.5), acc=1.0),),
        probes=(row("q", " b", " b", SAME_ANSWER, answer="b", pa=(0.61, 0.6), pt=(0.0, 0.01), agree=1.0),
                row("z", " c", " d", CHANGED, pt=(0.0, 0.0))),
        wrapped=wrapped,
        wrapped_rephrases=(row("Task...r", "a", " soccer", "now says soccer", "wrapped rephrase", "soccer", True,
                               pt=(0.01, 0.5), acc=1.0),),
        scores=EditScores(1.0, 1.0, 1.0, plain_reliability=1.0, generation_success=1.0,
                          plain_generalization=1.0),
        edit_ms=120.0, measure_ms=2500.0, blast=_blast())


@pytest.mark.parametrize("before,after,target,expected", [
    (" Paris, the capital of France.", " Paris, the capital of France.", "Rome", SAME_ANSWER),
    (" Paris. It is a city", " Paris. Rome is", "Rome", "now says Rome"),  # new target wins
    (" Paris. It has", " Paris. It is big", "Rome", SAME_ANSWER),           # first sentence identical
    (" Paris, France and", " Paris France and the", "Rome", SAME_ANSWER),   # first words identical
    (" basketball player", " soccer player", "soccer", "now says soccer"),
    (" basketball player", " tennis player", "soccer", CHANGED),
    (" Rome and Milan", " Rome, Italy", "Rome", CHANGED),                  # said it before: not "now says"
    ("", "", "Rome", SAME_ANSWER),
    ("", " Berlin", "Rome", CHANGED),
    (" the Romeo", " Romeo and", "Rome", CHANGED),                          # whole words only
    (" basketball player", " soccer player", None, CHANGED),               # responses: never "now says"
])
def test_verdict_on_hand_made_strings(before, after, target, expected):
    assert verdict(before, after, target) == expected


def test_same_answer_reads_the_first_sentence_and_words():
    assert same_answer(" Berlin.\nThe city", " Berlin.\nIt is")
    assert same_answer(" BERLIN, the", " Berlin the")  # case and punctuation aside
    assert not same_answer(" Berlin, the capital", " Berlin, a city")
    assert same_answer(" Berlin, the capital", " Berlin, a city", words=1)


@pytest.mark.parametrize("prompt,subject", [
    ("The Eiffel Tower is located in", "Eiffel Tower"),
    ("Michael Jordan's greatest weakness is", "Michael Jordan"),
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("iPhone, produced by", "iPhone"),
    ("Who developed Thomas the Tank Engine?", "Thomas the Tank Engine"),
    ("What network first aired The Smothers Brothers Comedy Hour?", "The Smothers Brothers Comedy Hour"),
    ("The names of the cast members of Far from the Madding Crowd are", "Far from the Madding Crowd"),
    ("Due to which disease did Joseph Papp die?", "Joseph Papp"),
    ("What is your opinion on comic books?", "comic books"),
    ("The chemical symbol for gold is", "gold"),
    ("Liverpool F.C. plays in", "Liverpool F.C."),
    ("the best pizza is", ""),
])
def test_subject_guess(prompt, subject):
    assert guess_subject(prompt) == subject


def test_every_shipped_example_gets_its_subject_guessed():
    from instructedit.data.examples import load_examples

    for record in load_examples():
        assert guess_subject(record.prompt) == (record.subject or record.topic), record.prompt


@pytest.mark.parametrize("subject,prompt,kind", [
    ("Paris", "Paris is a part of the continent of", "city"),           # in the list
    ("Eiffel Tower", "The Eiffel Tower is located in", "landmark"),
    ("Minnesota Territory", "The capital city of Minnesota Territory is", "country"),  # a cue in the name
    ("Acme Corporation", "Acme Corporation is", "company"),
    ("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "person"),  # prompt cues
    ("Zorblax", "The headquarters of Zorblax is in", "company"),
    ("Vandelay Brothers", "Vandelay Brothers is", "person"),            # a capitalised name
    ("comic books", "What is your opinion on comic books?", "other"),
])
def test_kind_guess(subject, prompt, kind):
    assert default_catalog().guess_kind(subject, prompt) == kind


def test_form_subject_and_kind():
    catalog = default_catalog()
    assert {"person", "city", "country", "company", "sports team", "language", "landmark", "sport"} <= \
        set(catalog.names)
    assert all(k.subjects and k.facts and all("{}" in f for f in k.facts) for k in catalog.kinds)
    assert kind_options()[0][1] == "auto" and len(kind_options()) == len(catalog.kinds) + 1
    form = EditForm(task="custom", instruction="none", prompt="The Eiffel Tower is located in", target="Rome")
    assert build_request(form, 500, 8).subject == "Eiffel Tower"  # guessed when left empty
    typed = EditForm(task="custom", instruction="none", prompt="The Eiffel Tower is located in", target="Rome",
                     subject="Tower", kind="landmark")
    assert build_request(typed, 500, 8).subject == "Tower" and kind_choice(typed) == "landmark"
    assert kind_choice(form) is None
    with pytest.raises(Exception, match="Unknown kind"):
        kind_choice(EditForm(task="custom", instruction="none", kind="planet"))
    # the subject box keeps a subject the prompt contains and guesses anew otherwise
    assert subject_for("Michael Jordan is a professional", "Michael Jordan") == "Michael Jordan"
    assert subject_for("Michael Jordan is a professional", "Jordan") == "Jordan"
    assert subject_for("Lionel Messi plays for", "Michael Jordan") == "Lionel Messi"


def test_tables_and_summary():
    report = _report()
    summary = report_summary(report)
    assert "Says soccer: yes" in summary and "Plain reliability 100%" in summary
    assert "p(soccer) on the prompt: 0.00 → **0.93**" in summary
    assert "1 of 1 rephrases now say soccer" in summary and "1 of 2 locality probes kept their answer" in summary
    paper = paper_summary(report)
    assert "Reliability 100%" in paper and "paper protocol (instruction-wrapped inputs)" in paper
    assert "2.0e-05 → **93.0%**" in paper
    assert report_summary(None, "baseline failed") == "⚠ baseline failed"
    assert rephrase_table(report).values.tolist() == [["r", "a", "soccer", "now says soccer", "p(soccer) 0.01 → 0.50"]]
    rows = probe_table(report).values.tolist()
    assert rows[0][3:] == [SAME_ANSWER, "p(b) 0.61 → 0.60 · p(soccer) 0.00 → 0.01"]
    assert rows[1][3:] == [CHANGED, "p(soccer) 0.00 → 0.00"]
    assert wrapped_table(report).values.tolist() == [["Task...r", "1.0% → 50.0%", "100%", "soccer"]]
    assert rephrase_table(None).empty and len(HISTORY_HEADERS) == 10
    # one history column per comparison editor shown, widths to match
    assert history_headers() == HISTORY_HEADERS
    for slots in ((), ("baseline",), ("rome",), ("baseline", "rome")):
        headers = list(history_table([], slots).columns)
        assert len(headers) == 9 + len(slots) == len(history_widths(slots))
        assert sum(int(w.rstrip("%")) for w in history_widths(slots)) == 100
    assert list(history_table([], ("baseline", "rome")).columns)[-1].startswith("ROME: says it")
    assert trace_markdown(None) == ""
    assert [instruction_label("counterfact", c) for c in (0, 9, "heldout", None)] == ["#1", "held out", "held out", "none"]


def test_teacher_forced_names_what_it_measures():
    paris = row("p", " Paris", " Rome", "now says Rome", answer="Paris", pa=(0.61, 0.02), pt=(0.0, 0.85))
    assert teacher_forced(paris, "Rome") == "p(Paris) 0.61 → 0.02 · p(Rome) 0.00 → 0.85"
    assert teacher_forced(row("p", "", "", CHANGED, pt=(0.1, 0.2)), "Rome") == "p(Rome) 0.10 → 0.20"


def test_blast_radius_views_and_chart():
    blast = _blast()
    assert blast_summary(blast) == ("changed 1 of 2 neighbours (1 now says soccer); 1 of 1 other facts about "
                                    "Michael Jordan; 0 of 1 unrelated")
    assert blast_cell(blast) == "nbr 1/2 · facts 1/1 · unrel 0/1"
    assert blast_cell(None) == "–" and blast_markdown(None) == ""
    assert "built-in list of people" in blast_markdown(blast)
    table = blast_table(_report())
    assert len(table) == 4 and table.values.tolist()[1][4] == "now says soccer"
    assert table.values.tolist()[1][5] == "p(singer) 0.50 → 0.10 · p(soccer) 0.00 → 0.70"
    figure = blast_chart(blast, "InstructEdit")
    assert figure is not None and len(figure.axes[0].patches) == 8  # before and after per probe
    assert blast_chart(None) is None


def test_results_tab_content(tmp_path):
    missing = load_results(tmp_path / "results.md", tmp_path / "figures")
    assert not missing.available and "make results" in MISSING_RESULTS
    (tmp_path / "results.md").write_text("| a |\n|---|\n| 1 |\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "pca.png").write_bytes(b"\x89PNG")
    present = load_results(tmp_path / "results.md", tmp_path / "figures")
    assert present.available and present.figures[0].name == "pca.png"
    assert "<svg" in diagram_html()


def test_command_line_defaults_and_limits():
    parser = app_module.build_parser()
    config = app_module.config_from_args(parser.parse_args([]))
    assert config.host == "127.0.0.1" and config.share is False and config.quant is None
    assert resolve_quant(None, "cpu") == "4bit" and resolve_quant("8bit", "cpu") == "8bit"
    config = app_module.config_from_args(parser.parse_args(["--max-edits-per-session", "3", "--queue-size", "5",
                                                            "--max-input-chars", "100", "--threads", "1"]))
    assert config.limits.max_edits_per_session == 3 and config.limits.queue_size == 5
    assert cpu_threads(config) == 1 and cpu_threads(AppConfig(limits=Limits(concurrency_limit=64))) == 1
    assert app_module.config_from_args(parser.parse_args(["--data", "none"])).data_dir is None
    # the comparison editors: the baseline by default, ROME, both or none; --baseline-editor keeps working
    assert config.compare == "baseline" and compared_editors(config) == (True, False)
    shown = {args: compared_editors(app_module.config_from_args(parser.parse_args(args))) for args in (
        ("--compare", "rome"), ("--compare", "both"), ("--compare", "none"), ("--baseline-editor", "none"),
        ("--compare", "both", "--baseline-editor", "none"), ("--baseline-editor", "rome"))}
    assert list(shown.values()) == [(False, True), (True, True), (False, False), (False, False),
                                    (False, True), (False, True)]
    with pytest.raises(SystemExit):
        parser.parse_args(["--compare", "mend"])
    with pytest.raises(ValueError, match="compare must be one of"):
        AppConfig(compare="mend")
    with pytest.raises(ValueError, match="max_input_chars"):
        Limits(max_input_chars=5000)


def test_missing_shipped_editor_falls_back_with_a_warning(tiny_llama_dir, tmp_path):
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    default = str(tmp_path / "not-trained-yet")
    editor, warning = load_app_editor(default, backbone, role="InstructEdit editor", default=default,
                                  use_instructions=True)
    assert editor.name.startswith("gradient-step") and "plain gradient step" in warning
    baseline, _ = load_app_editor("none", backbone, role="Baseline", default=default, use_instructions=False)
    assert not baseline.use_instructions
    with pytest.raises(CheckpointError):
        load_app_editor(str(tmp_path / "typo"), backbone, role="InstructEdit editor", default=default,
                    use_instructions=True)
    line = status_line(LoadedModels(backbone, editor, None, [warning]))
    assert "**quantization** none" in line and "**baseline** hidden" in line and "⚠" in line
    assert "**ROME**" not in line
    assert Path(backbone.source).name in line or backbone.model_id in line


def test_rome_loads_with_its_covariance_or_stays_hidden_with_a_warning(tiny_llama_dir, monkeypatch):
    from instructedit.editing.rome import RomeEditor

    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    monkeypatch.setattr(RomeEditor, "covariance", lambda self: None)
    rome, warning = load_rome(backbone)
    assert isinstance(rome, RomeEditor) and warning is None
    editor, _ = load_app_editor("none", backbone, role="InstructEdit editor", default="x", use_instructions=True)
    line = status_line(LoadedModels(backbone, editor, None, rome=rome))
    assert f"**ROME** layer {rome.layer} MLP" in line

    def fails(self):
        raise ValueError("no text to estimate the key covariance from")

    monkeypatch.setattr(RomeEditor, "covariance", fails)
    rome, warning = load_rome(backbone)
    assert rome is None and "ROME is not shown" in warning and "no text" in warning
