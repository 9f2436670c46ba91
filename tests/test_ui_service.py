"""The app's service layer on a tiny model: edits (what a user sees, the paper protocol, the blast
radius), isolation, history, export/import, limits."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from instructedit.data.neighbours import NeighbourIndex
from instructedit.data.records import EditRecord
from instructedit.editing.editor import Editor, EditRequest
from instructedit.editing.rome import RomeConfig, RomeEditor
from instructedit.evaluate.plain import contains_answer
from instructedit.measuring.probing import generate_under
from instructedit.measuring.verdicts import SAME_ANSWER
from instructedit.model.backbone import load_backbone
from instructedit.tracing import summarise
from instructedit.web.blast import (
    FACT,
    NEIGHBOUR,
    UNRELATED,
    BlastPlanner,
    load_neighbour_indexes,
    measure_blast,
)
from instructedit.web.config import Limits
from instructedit.web.errors import UserError
from instructedit.web.forms import EditForm, build_request, instruction_options, preview_inputs
from instructedit.web.history import FORMAT
from instructedit.web.report import edit_payload
from instructedit.web.service import EditService
from instructedit.web.sessions import SessionStore
from instructedit.web.subjects import Catalog, Kind
from instructedit.web.tracing_view import PANEL_KINDS, PANEL_SAMPLES, trace_markdown

PROMPT = "The Eiffel Tower is located in"
TARGET = "Paris"


@pytest.fixture(scope="module")
def backbone(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def editors(backbone):
    main = Editor.untrained(backbone, step_size=0.5)
    base = Editor.untrained(backbone, step_size=0.5, use_instructions=False)
    return main, base


@pytest.fixture()
def service(backbone, editors, tmp_path):
    limits = Limits(max_new_tokens=6, max_edits_per_session=3, max_input_chars=200, max_lines=3)
    return EditService(backbone, editors[0], editors[1], limits, export_dir=tmp_path)


@pytest.fixture(scope="module")
def rome(backbone):
    return RomeEditor(backbone, RomeConfig(covariance="identity", n_prefixes=2, prefix_tokens=4, v_steps=6))


@pytest.fixture()
def rome_service(backbone, editors, rome, tmp_path):
    """InstructEdit with both comparison editors: the baseline and ROME."""
    limits = Limits(max_new_tokens=6, max_edits_per_session=3, max_input_chars=200, max_lines=3)
    return EditService(backbone, editors[0], editors[1], limits, export_dir=tmp_path, rome=rome,
                       trace_dir=tmp_path / "traces")


def request(prompt=PROMPT, target=TARGET, **kw) -> EditRequest:
    kw.setdefault("task", "counterfact")
    kw.setdefault("instruction", 0)
    kw.setdefault("rephrases", ("The Eiffel Tower is in",))
    kw.setdefault("probes", ("The capital of France is", "Rome is in"))
    return EditRequest(prompt, target, **kw)


def test_edit_returns_before_after_and_scores(service):
    out = service.edit("s1", request())
    report = out.report
    assert report.model_input.startswith("Task: counterfact\nDescription: ")
    assert report.model_input.endswith("Input: " + PROMPT)
    assert report.wrapped.p_target_after > report.wrapped.p_target_before
    assert report.scores.reliability == pytest.approx(1.0)
    assert 0.0 <= report.scores.generalization <= 1.0
    assert 0.0 <= report.scores.locality <= 1.0
    assert len(report.rephrases) == 1 and len(report.probes) == 2
    assert all(isinstance(p.before, str) and isinstance(p.after, str) for p in report.probes)
    assert out.baseline_report is not None and out.baseline_report.model_input == PROMPT
    assert [e.id for e in out.history] == [out.entry.id]
    assert report.wrapped.after != report.wrapped.before or report.wrapped.p_target_after > 0.5


def test_the_prompt_as_typed_comes_first_and_matches_the_playground(service):
    out = service.edit("plain", request())
    report, base = out.report, out.baseline_report
    # what a user sees: the prompt as typed, not the wrapped input, continued as the Playground does
    assert report.prompt.prompt == PROMPT and report.prompt.group == "prompt"
    without, with_edit = service.generate("plain", PROMPT)
    assert (report.prompt.before, report.prompt.after) == (without, with_edit)
    # the plain scores follow the evaluation's definitions
    assert report.scores.generation_success == float(contains_answer(report.prompt.after, TARGET))
    assert 0.0 <= report.scores.plain_reliability <= 1.0
    assert report.scores.plain_generalization == pytest.approx(report.rephrases[0].target_accuracy)
    assert [r.prompt for r in report.rephrases] == ["The Eiffel Tower is in"]  # as typed, not wrapped
    assert report.wrapped_rephrases[0].prompt.startswith("Task: counterfact")
    # every probe row has a verdict read off its two continuations
    for row in (*report.rephrases, *report.probes):
        assert row.verdict in (SAME_ANSWER, "changed", f"now says {TARGET}")
        assert row.unchanged == (row.verdict == SAME_ANSWER)
    # the baseline reads the prompt as typed: its "wrapped" input is the prompt itself
    assert base.wrapped.prompt == PROMPT and base.prompt.before == report.prompt.before


def tiny_catalog() -> Catalog:
    return Catalog((Kind("landmark", "landmarks", ("Big Ben", "Eiffel Tower", "Colosseum", "Taj Mahal"),
                         ("{} was built in", "{} is made of", "The Eiffel Tower is located in")),
                    Kind("other", "other subjects", ("gold",), ("{} is",))))


def test_blast_radius_probes_and_counts(backbone, editors):
    planner = BlastPlanner(tiny_catalog(), neighbours=2, facts=5, unrelated=("Rome is in", PROMPT))
    req = request(subject="Eiffel Tower")
    plan = planner.plan(req, "landmark")
    assert (plan.subject, plan.kind, plan.source) == ("Eiffel Tower", "landmark", "built-in list of landmarks")
    by_group = {g: [p.prompt for p in plan.probes if p.group == g] for g in (NEIGHBOUR, FACT, UNRELATED)}
    assert by_group == {NEIGHBOUR: ["The Big Ben is located in", "The Colosseum is located in"],
                        FACT: ["Eiffel Tower was built in", "Eiffel Tower is made of"],  # not the prompt itself
                        UNRELATED: ["Rome is in"]}
    assert planner.plan(request(), None).kind == "landmark"  # subject guessed, kind from the list
    vague = planner.plan(request(prompt="the best pizza is"), None)  # no subject to swap or ask about
    assert vague.subject == "" and "no subject" in vague.source
    assert [p.group for p in vague.probes] == [UNRELATED, UNRELATED]
    edit = editors[0].edit(req)
    blast = measure_blast(backbone, [], [edit.patch], plan, TARGET, max_new_tokens=6)
    assert [p.prompt for p in blast.probes] == [p.prompt for p in plan.probes]
    for group in (NEIGHBOUR, FACT, UNRELATED):
        rows = blast.group(group)
        count = blast.count(group)
        assert count.total == len(rows) == len(by_group[group])
        assert count.changed == sum(r.verdict != SAME_ANSWER for r in rows)
        assert count.now_say_target == sum(r.verdict == f"now says {TARGET}" for r in rows)
    assert all(r.p_target_after > r.p_target_before for r in blast.probes)  # a strong, unkeyed edit
    # no edit at all: nothing changes, every probe keeps its answer
    still = measure_blast(backbone, [], [], plan, TARGET, max_new_tokens=6)
    assert all(r.verdict == SAME_ANSWER for r in still.probes)
    assert [still.count(g).changed for g in (NEIGHBOUR, FACT, UNRELATED)] == [0, 0, 0]


def test_blast_radius_uses_the_data_neighbours_when_it_has_them(tmp_path):
    assert load_neighbour_indexes(tmp_path / "no-data") == {} and load_neighbour_indexes(None) == {}
    records = [EditRecord(id=f"cf/{i}", task="counterfact", prompt=f"The mother tongue of {name} is",
                          target_new="Klingon", subject=name, ground_truth=answer)
               for i, (name, answer) in enumerate([("Danielle Darrieux", "French"), ("Michel Rocard", "French"),
                                                   ("Thomas Mann", "German"), ("Jan Smith", "English")])]
    planner = BlastPlanner(tiny_catalog(), indexes={"counterfact": NeighbourIndex(records)}, neighbours=2,
                           unrelated=())
    plan = planner.plan(EditRequest("The mother tongue of Danielle Darrieux is", "English", task="custom"))
    neighbours = [p for p in plan.probes if p.group == NEIGHBOUR]
    assert plan.subject == "Danielle Darrieux" and "CounterFact test data" in plan.source
    assert len(neighbours) == 2 and all(p.answer in ("French", "German") for p in neighbours)  # not the target
    assert all("Danielle Darrieux" not in p.prompt for p in neighbours)
    other = planner.plan(EditRequest("Big Ben is located in", "Rome", task="custom"), "landmark")
    assert other.source == "built-in list of landmarks"


def test_every_edit_gets_its_blast_radius(service):
    out = service.edit("blast", request(subject="Eiffel Tower"), kind="landmark")
    blast = out.report.blast
    assert blast is not None and blast.subject == "Eiffel Tower" and blast.kind == "landmark"
    assert {p.group for p in blast.probes} == {NEIGHBOUR, FACT, UNRELATED}
    assert out.baseline_report.blast is not None and out.entry.blast is blast
    # both editors start from the same model: the same texts before the edit
    assert [p.before for p in blast.probes] == [p.before for p in out.baseline_report.blast.probes]
    guessed = service.edit("blast", request(prompt="Rome is in", rephrases=(), probes=()))
    assert guessed.report.blast.subject == "Rome" and guessed.report.blast.kind == "city"


def test_sessions_are_isolated(service):
    before_b = service.generate("b", PROMPT)
    service.edit("a", request())
    assert len(service.history("a")) == 1 and service.history("b") == []
    without_a, with_a = service.generate("a", PROMPT)
    assert without_a == before_b[0]
    assert with_a != without_a
    assert service.generate("b", PROMPT) == before_b


def test_concurrent_sessions_do_not_leak(service):
    errors = []
    results = {}

    def work(sid, target):
        try:
            service.edit(sid, request(target=target, rephrases=(), probes=()))
            results[sid] = service.generate(sid, PROMPT)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}", t))
               for i, t in enumerate(["Paris", "London", "Berlin", "Madrid"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert len(service.history(f"t{i}")) == 1
    # each session's edited output equals what a fresh session gets from the same single edit
    service.edit("check", request(target="London", rephrases=(), probes=()))
    assert service.generate("check", PROMPT) == results["t1"]


def test_undo_remove_reset_and_stacking(service):
    first = service.edit("s", request(target="London")).entry
    second = service.edit("s", request(prompt="Rome is in", target="Berlin")).entry
    assert [e.id for e in service.history("s")] == [first.id, second.id]
    assert service.undo("s").id == second.id
    third = service.edit("s", request(prompt="Rome is in", target="Madrid")).entry
    assert service.remove("s", first.id).id == first.id
    assert [e.id for e in service.history("s")] == [third.id]
    with pytest.raises(UserError, match="No active edit"):
        service.remove("s", "nope")
    assert service.reset("s") == 1
    assert service.history("s") == []
    with pytest.raises(UserError, match="no edit to undo"):
        service.undo("s")


def test_per_session_cap(service):
    for target in ("London", "Berlin", "Madrid"):
        service.edit("cap", request(target=target, rephrases=(), probes=()))
    with pytest.raises(UserError, match="limit is 3"):
        service.edit("cap", request(target="Paris", rephrases=(), probes=()))
    assert len(service.history("cap")) == 3
    service.edit("other", request(target="Paris", rephrases=(), probes=()))


def test_export_import_round_trip(service, tmp_path):
    service.edit("src", request(target="London", subject="Eiffel Tower"))
    service.edit("src", request(prompt="Rome is in", target="Berlin", task="custom", instruction=None,
                                rephrases=(), probes=()))
    path = service.export_file("src")
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["model_id"] == service.model_id
    assert [e["target"] for e in data["edits"]] == ["London", "Berlin"]
    assert not list(path.parent.glob(".tmp-*"))
    service.edit("dst", request(target="Madrid", rephrases=(), probes=()))
    entries = service.import_history("dst", path.read_bytes())
    assert [e.id for e in entries] == [e["id"] for e in data["edits"]]
    assert [e.request.target for e in service.history("dst")] == ["London", "Berlin"]
    assert service.history("dst")[0].request.subject == "Eiffel Tower"
    assert service.history("dst")[0].scores.plain_reliability is not None
    assert service.history("dst")[0].blast is None  # imports are not probed
    assert service.generate("dst", PROMPT) == service.generate("src", PROMPT)
    assert service.generate("dst", "Rome is in") == service.generate("src", "Rome is in")


@pytest.mark.parametrize("raw,match", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"format": "other"}), "not an InstructEdit Studio history"),
    (json.dumps({"format": FORMAT, "version": 1, "model_id": "gpt2", "edits": []}), "made on model"),
    ("MODEL", "field 'prompt'"),
    ("TASK", "unknown task"),
    ("INSTRUCTION", "out of range"),
    ("MANY", "at most 3"),
])
def test_bad_imports_are_rejected_and_change_nothing(service, raw, match):
    good = {"task": "counterfact", "instruction": 0, "prompt": PROMPT, "target": "London"}
    edits = {"MODEL": [{**good, "prompt": 5}], "TASK": [{**good, "task": "poetry"}],
             "INSTRUCTION": [good, {**good, "instruction": 42}], "MANY": [good] * 4}
    if raw in edits:
        raw = json.dumps({"format": FORMAT, "version": 1, "model_id": service.model_id,
                          "edits": edits[raw]})
    first = service.edit("bad", request(rephrases=(), probes=())).entry
    with pytest.raises(UserError, match=match):
        service.import_history("bad", raw)
    assert [e.id for e in service.history("bad")] == [first.id]


def test_bad_requests_get_messages(service):
    with pytest.raises(UserError, match="limit is 200"):
        service.edit("x", request(prompt="x" * 201))
    with pytest.raises(UserError, match="topic"):
        service.edit("x", request(task="convsent", instruction=0, prompt="What about cats?", target="I love them"))
    with pytest.raises(UserError, match="empty"):
        service.edit("x", request(prompt="   "))
    with pytest.raises(UserError, match="empty"):
        service.generate("x", "")
    assert service.history("x") == []


def test_form_to_request_and_preview():
    form = EditForm(task="convsent", instruction="heldout", topic="Jules Verne", label="Positive",
                    prompt="What do you think of Jules Verne?", target="I love his books.",
                    rephrases="How do you feel about Jules Verne?\n\n", probes="")
    req = build_request(form, 500, 8)
    assert req.instruction == "heldout" and req.label == "positive" and len(req.rephrases) == 1
    wrapped, plain = preview_inputs(form, 500, 8)
    assert "Jules Verne" in wrapped.splitlines()[1] and plain == form.prompt
    assert [v for _, v in instruction_options("custom")] == ["none", "custom"]
    assert len(instruction_options("zsre")) == 12
    with pytest.raises(UserError, match="Write your instruction"):
        build_request(EditForm(task="custom", instruction="custom", prompt="a", target="b"), 500, 8)
    with pytest.raises(UserError, match="limit is 2"):
        build_request(EditForm(task="custom", instruction="none", prompt="a", target="b",
                               probes="1\n2\n3"), 500, 2)
    assert "not ready" in preview_inputs(EditForm(task="convsent", instruction="0", prompt="hi"), 500, 8)[0]


def test_session_store_idle_sweep_and_unload():
    now = [1000.0]
    store = SessionStore(max_edits=2, idle_timeout_s=10, sweep_every_s=1, clock=lambda: now[0])
    with store.open("a") as s:
        s.entries.append("x")
    with store.open("b"):
        pass
    now[0] += 5
    with store.open("b"):
        pass
    now[0] += 6  # a idle 11 s, b idle 6 s
    assert store.sweep() == 1 and "a" not in store and "b" in store
    assert store.drop("b") and len(store) == 0
    with pytest.raises(UserError, match="no session"):
        with store.open(""):
            pass


def test_session_store_refuses_beyond_max_sessions():
    store = SessionStore(max_edits=1, max_sessions=1)
    with store.open("a"):
        pass
    with pytest.raises(UserError, match="1 sessions"):
        with store.open("b"):
            pass


# ----- ROME as a comparison editor ------------------------------------------------------------------
def test_rome_compares_after_instructedit_is_shown(rome_service, rome):
    early = []
    out = rome_service.edit("r", request(target="Rome", subject="Eiffel Tower"), on_update=early.append)
    # a first look at the prompt as typed, then InstructEdit's whole result, then the baseline's,
    # each handed over before the rest runs
    assert [o.pending for o in early] == [("instructedit", "baseline", "rome"), ("baseline", "rome"), ("rome",)]
    look = early[0].report
    assert look.partial and look.blast is None and look.rephrases == () and not out.report.partial
    assert look.prompt.before == out.report.prompt.before and look.prompt.after == out.report.prompt.after
    assert look.scores.plain_reliability == out.report.scores.plain_reliability
    assert edit_payload(early[0])["instructedit"]["partial"] is True
    assert early[1].report is out.report and early[1].history[-1] is out.entry
    assert early[1].rome_report is None and edit_payload(early[1])["pending"] == ["baseline", "rome"]
    assert early[2].baseline_report is not None and early[2].rome_report is None
    # ROME's own result: the prompt as typed (no instruction), its scores, blast radius and history
    assert out.rome_error is None and out.rome_report.editor == "rome" and out.rome_report.model_input == PROMPT
    assert out.rome_report.blast is not None and out.rome_report.prompt.before == out.report.prompt.before
    assert list(out.entry.rome.patch.layers) == rome.module_names and out.entry.rome_scores is not None
    payload = edit_payload(out)
    assert payload["rome"]["editor"] == "rome" and payload["rome_error"] is None and "pending" not in payload
    assert payload["baseline"] is not None
    # ROME's next edit in the session is made on top of its first (its own stack, not InstructEdit's)
    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(rome, name)

        def edit(self, request, active=()):
            calls.append(list(active))
            return rome.edit(request, active=active)

    rome_service.rome = Spy()
    second = rome_service.edit("r", request(prompt="Rome is in", target="Berlin", subject="Rome"))
    assert calls == [[out.entry.rome]]
    n = rome_service.limits.max_new_tokens
    assert second.rome_report.prompt.before == generate_under(rome_service.backbone, [out.entry.rome.patch],
                                                              ["Rome is in"], n)["Rome is in"]
    assert second.report.prompt.before == generate_under(rome_service.backbone, [out.entry.edit.patch],
                                                         ["Rome is in"], n)["Rome is in"]
    assert rome_service.undo("r").rome is second.entry.rome
    assert [e.rome for e in rome_service.history("r")] == [out.entry.rome]


def test_rome_without_a_usable_subject_says_why(rome_service):
    vague = rome_service.edit("v", request(prompt="the best pizza is", target="pineapple", subject=None,
                                           rephrases=(), probes=()))
    assert vague.rome_report is None and vague.entry.rome is None
    assert vague.rome_error.startswith("ROME needs the subject of the edit: type it in the Subject box")
    # the main editor's result (and the baseline's) still stands
    assert vague.report.scores is not None and vague.baseline_report is not None
    assert len(rome_service.history("v")) == 1
    elsewhere = rome_service.edit("v", request(subject="Colosseum", rephrases=(), probes=()))
    assert "'Colosseum' does not occur in 'The Eiffel Tower is located in'" in elsewhere.rome_error
    # a later edit with a subject: ROME edits on top of its own (no) earlier edits
    fine = rome_service.edit("v", request(prompt="Rome is in", target="Berlin", subject="Rome",
                                          rephrases=(), probes=()))
    assert fine.rome_error is None
    assert fine.rome_report.prompt.before == rome_service.generate("fresh", "Rome is in")[0]
    # a ConvSent edit's topic is its subject
    assert build_request(EditForm(task="convsent", instruction="0", topic="Jules Verne", label="positive",
                                  prompt="What do you think of Jules Verne?", target="I love him."),
                         200, 3).subject == "Jules Verne"


def test_rome_edits_are_per_session(rome_service):
    a = rome_service.edit("ra", request(target="Rome", subject="Eiffel Tower", rephrases=(), probes=()))
    # another session's ROME edit starts from the unedited model, not from session ra's ROME edit
    probe = "Rome is in"
    b = rome_service.edit("rb", request(prompt=probe, target="Berlin", subject="Rome", rephrases=(), probes=()))
    assert b.rome_report.prompt.before == rome_service.generate("fresh", probe)[0]
    assert [e.rome for e in rome_service.history("rb")] == [b.entry.rome]
    assert [e.rome for e in rome_service.history("ra")] == [a.entry.rome]
    # concurrent ROME edits in two sessions neither fail nor mix
    outs, errors = {}, []

    def work(sid):
        try:
            outs[sid] = rome_service.edit(sid, request(target="London", subject="Eiffel Tower", rephrases=(),
                                                       probes=()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(sid,)) for sid in ("c1", "c2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(o.rome_report is not None for o in outs.values())
    assert outs["c1"].rome_report.prompt.after == outs["c2"].rome_report.prompt.after
    # export names ROME and its scores; import recomputes its edits
    data = rome_service.export("ra")
    assert data["rome_editor"] == "rome" and data["edits"][0]["rome_scores"] is not None
    entries = rome_service.import_history("rd", json.dumps(data))
    assert entries[0].rome is not None and entries[0].rome_scores is not None


# ----- where is this fact? --------------------------------------------------------------------------
def test_trace_draws_the_heatmap_and_reads_it(rome_service):
    view = rome_service.trace("tr", f"  {PROMPT} ", "Eiffel  Tower")
    assert view.image.is_file() and view.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert view.reading == summarise(view.result) and view.reading.startswith("p(")
    assert (view.prompt, view.subject, view.samples) == (PROMPT, "Eiffel Tower", PANEL_SAMPLES)
    assert tuple(view.result.scores) == PANEL_KINDS and view.active_edits == 0
    text = trace_markdown(view)
    assert text.startswith(f"**Where is this fact?** {view.reading}.") and "the unedited model:" in text
    # with edits in the session it still traces the unedited model, and says so
    rome_service.edit("tr", request(rephrases=(), probes=()))
    again = rome_service.trace("tr", PROMPT, "Eiffel Tower")
    assert again.result.clean_prob == pytest.approx(view.result.clean_prob)
    assert "(your 1 active edit is not applied)" in trace_markdown(again)
    folder = again.image.parent
    rome_service.close("tr")
    assert not folder.exists()


@pytest.mark.parametrize("prompt,subject,match", [
    ("   ", "Eiffel Tower", "The prompt is empty"),
    (PROMPT, "", "Type the subject"),
    (PROMPT, "Colosseum", "'Colosseum' does not occur in the prompt"),
    (PROMPT + " x" * 200, "Eiffel Tower", "limit is 200"),
])
def test_trace_refuses_bad_input_with_a_sentence(rome_service, prompt, subject, match):
    with pytest.raises(UserError, match=match):
        rome_service.trace("bad-trace", prompt, subject)
    assert not Path(rome_service.trace_dir, "bad-trace").exists()


def test_unedited_continuations_are_remembered_across_requests(service, backbone):
    from instructedit.measuring.probing import GenerationCache, UneditedTexts

    n = service.limits.max_new_tokens
    without, _ = service.generate("u", PROMPT)
    assert service.unedited.get(n, PROMPT) == without  # the Playground's text, kept server-wide
    # a new request's first look reads it from there: the same text, nothing regenerated
    cache = GenerationCache(service.unedited)
    assert generate_under(backbone, [], [PROMPT], n, cache)[PROMPT] == without
    # texts generated in a batch (padded) are kept only under the batch's padded width, never as
    # the Playground's single-prompt text; the memory is bounded
    store = UneditedTexts(capacity=2)
    batch = generate_under(backbone, [], ["The sky is", "Paris is in"], 3, GenerationCache(store))
    width = max(len(backbone.tokenizer(t)["input_ids"]) for t in batch)
    assert store.get(3, "The sky is") is None and store.get(3, "Paris is in") is None
    assert store.get(3, "The sky is", width=width) == batch["The sky is"]
    assert store.get(3, "The sky is", width=width + 1) is None
    store = UneditedTexts(capacity=2)
    for text in ("a", "b", "c"):
        generate_under(backbone, [], [text], 3, GenerationCache(store))
    assert len(store) == 2 and store.get(3, "a") is None and store.get(3, "c") is not None
    # a session's edited model never reads or fills it
    out = service.edit("u", request())
    patches = [out.entry.edit.patch]
    edited = generate_under(backbone, patches, ["Paris is in"], n, GenerationCache(service.unedited))
    assert service.unedited.get(n, "Paris is in") is None and isinstance(edited["Paris is in"], str)


def test_read_ahead_gives_the_next_edit_its_before_text_under_exactly_the_sessions_edits(service):
    first = service.edit("ra", request())
    other = "The Colosseum is located in"
    says = service.read_ahead("ra", other)
    assert says == service.generate("ra", other)[1]  # what the Playground shows with the edit
    session_key = ((first.entry.id,), service.limits.max_new_tokens, other)
    with service.store.open("ra") as session:
        assert session.recall_text(*session_key) == says
        session.remember_text(*session_key, "<read ahead>")  # marks the text the next edit must reuse
    second = service.edit("ra", request(prompt=other))
    assert second.report.prompt.before == "<read ahead>"
    # after an undo the edits differ: what was read ahead under them is not used
    service.undo("ra")
    service.undo("ra")
    service.edit("ra", request())
    expected = service.generate("ra", other)[1]
    third = service.edit("ra", request(prompt=other))
    assert third.report.prompt.before == expected != "<read ahead>"
    # read-ahead never creates a session and refuses what an edit would refuse
    assert service.read_ahead("nobody", other) and "nobody" not in service.store
    with pytest.raises(UserError):
        service.read_ahead("ra", "   ")
