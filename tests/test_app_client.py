"""The Gradio app on a tiny model, driven over HTTP with gradio_client like an API user would."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import anyio
import pytest

# anyio is a pytest plugin, so pytest rewrites its lazily imported submodules; importing one in a
# server thread while another thread compiles can crash CPython 3.11's parser. Import it here.
_ = anyio.open_file
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from instructedit.editing.editor import Editor  # noqa: E402
from instructedit.editing.rome import RomeConfig, RomeEditor  # noqa: E402
from instructedit.model.backbone import load_backbone  # noqa: E402
from instructedit.web.app import EDIT_OUTPUTS, build_demo, launch  # noqa: E402
from instructedit.web.config import AppConfig, Limits  # noqa: E402
from instructedit.web.pages import ResultsContent  # noqa: E402
from instructedit.web.service import EditService  # noqa: E402

PROMPT = "The Eiffel Tower is located in"
FORM = dict(task="counterfact", instruction="0", custom="", topic="", label="positive", prompt=PROMPT,
            target="Paris", rephrases="The Eiffel Tower is in",
            probes="The capital of France is\nRome is in", subject="", kind="auto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tiny_llama_dir, tmp_path_factory):
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    editor = Editor.untrained(backbone, step_size=0.5)
    baseline = Editor.untrained(backbone, step_size=0.5, use_instructions=False)
    limits = Limits(max_new_tokens=6, max_edits_per_session=3, max_input_chars=200, max_lines=3)
    rome = RomeEditor(backbone, RomeConfig(covariance="identity", n_prefixes=2, prefix_tokens=4, v_steps=6))
    service = EditService(backbone, editor, baseline, limits,
                          export_dir=tmp_path_factory.mktemp("exports"), rome=rome)
    demo = build_demo(service, "**Model** tiny", ResultsContent(None))
    config = AppConfig(host="127.0.0.1", port=free_port(), limits=limits)
    _, url, _ = launch(demo, config, prevent_thread_lock=True, quiet=True)
    yield url, service
    demo.close()


def client(url: str, tmp_path: Path) -> Client:
    return Client(url, verbose=False, download_files=str(tmp_path), analytics_enabled=False)


def edit(c: Client, **changes) -> dict:
    """The outputs of /edit by name."""
    form = {**FORM, **changes}
    out = c.predict(*form.values(), api_name="/edit")
    assert len(out) == len(EDIT_OUTPUTS)
    return dict(zip(EDIT_OUTPUTS, out, strict=True))


def text_of(spans) -> str:
    if isinstance(spans, dict):  # some versions wrap the value
        spans = spans.get("value") or []
    return "".join(s["token"] if isinstance(s, dict) else s[0] for s in spans or [])


def rows(table) -> list[list]:
    return table["data"] if isinstance(table, dict) else table


def test_edit_returns_before_after_and_scores(app, tmp_path):
    url, _ = app
    c = client(url, tmp_path)
    out = edit(c)
    report = out["report"]  # the first output: the report as one JSON object
    assert report["instructedit"]["scores"]["reliability"] == pytest.approx(1.0)
    assert out["ie_input"].startswith("Task: counterfact\nDescription:") and out["bl_input"] == PROMPT
    # what a user sees first: the prompt as typed, before and after
    plain = report["instructedit"]["plain"]
    assert plain["prompt"] == PROMPT
    assert text_of(out["ie_before"]) == plain["before"] and text_of(out["ie_after"]) == plain["after"]
    assert "Says Paris" in out["ie_summary"] and "Plain reliability" in out["ie_summary"]
    assert "→" in out["ie_summary"] and "Says Paris" in out["bl_summary"]
    # what the editor read, and the paper protocol, in the details
    assert text_of(out["ie_read_after"]) == report["instructedit"]["paper_protocol"]["wrapped"]["after"]
    assert "Reliability 100%" in out["ie_paper"] and "paper protocol" in out["ie_paper"]
    assert len(rows(out["ie_rephrases"])) == 1 and len(rows(out["ie_locality"])) == 2
    assert len(rows(out["bl_locality"])) == 2 and len(rows(out["ie_read_rephrases"])) == 1
    verdicts = [r[3] for r in rows(out["ie_locality"])]
    assert all(v in ("same answer", "changed", "now says Paris") for v in verdicts)
    # the blast radius, probed without asking
    blast = report["instructedit"]["blast_radius"]
    assert blast["subject"] == "Eiffel Tower" and blast["kind"] == "landmark"
    assert len(rows(out["ie_blast"])) == len(blast["probes"]) > 0
    assert out["ie_blast_chart"] is not None and "changed" in out["ie_blast_summary"]
    assert len(rows(out["history"])) == 1 and "1 active edit" in out["history_summary"]
    assert rows(out["history"])[0][8].startswith("nbr ")


def test_edit_shows_instructedit_first_then_the_comparisons(app, tmp_path):
    url, _ = app
    c = client(url, tmp_path)
    job = c.submit(*{**FORM, "subject": "Eiffel Tower"}.values(), api_name="/edit")
    final = dict(zip(EDIT_OUTPUTS, job.result(), strict=True))
    steps = [dict(zip(EDIT_OUTPUTS, o, strict=True)) for o in job.outputs()]
    look, first, last = steps[0], steps[1], steps[-1]
    # a first look: the prompt as typed before and after, everything else still computing
    assert "Plain reliability" in look["ie_summary"] and "⏳" in look["ie_blast_summary"]
    assert look["report"]["pending"] == ["instructedit", "baseline", "rome"]
    assert look["report"]["instructedit"]["partial"] is True
    # then InstructEdit's whole result, the baseline and ROME still computing
    assert "Plain reliability" in first["ie_summary"] and "Blast radius" in first["ie_blast_summary"]
    assert first["bl_summary"].startswith("⏳ Baseline") and first["rome_summary"].startswith("⏳ ROME")
    assert first["report"]["pending"] == ["baseline", "rome"] and first["report"]["rome"] is None
    # the last step is the whole result; ROME edits the prompt as typed at its subject
    assert last["rome_summary"] == final["rome_summary"] and "Plain reliability" in final["rome_summary"]
    assert "pending" not in final["report"] and final["report"]["rome"]["editor"] == "rome"
    assert final["rome_input"] == PROMPT and "Blast radius" in final["rome_blast_summary"]
    assert rows(final["history"])[0][10] != "–"  # ROME's scores in the history
    # without a subject ROME says why in its column; InstructEdit and the baseline still show
    vague = edit(c, task="custom", instruction="none", prompt="the best pizza is", target="pineapple",
                 subject="", rephrases="", probes="")
    assert vague["rome_summary"].startswith("⚠ ROME needs the subject of the edit")
    assert vague["report"]["rome"] is None and "ROME needs the subject" in vague["report"]["rome_error"]
    assert "Plain reliability" in vague["ie_summary"] and "Plain reliability" in vague["bl_summary"]


def test_where_is_this_fact(app, tmp_path):
    url, _ = app
    c = client(url, tmp_path)
    image, text = c.predict(PROMPT, "Eiffel Tower", api_name="/trace")
    assert Path(image).read_bytes()[:4] == b"\x89PNG" and text.startswith("**Where is this fact?** p(")
    assert "the unedited model" in text
    with pytest.raises(Exception, match="does not occur in the prompt"):
        c.predict(PROMPT, "Colosseum", api_name="/trace")


def test_edit_report_by_name_and_a_custom_subject(app, tmp_path):
    url, _ = app
    c = client(url, tmp_path)
    info = c.view_api(print_info=False, return_format="dict")["named_endpoints"]["/edit_report"]
    assert {"task", "instruction", "prompt", "target", "subject", "kind"} <= \
        {p["parameter_name"] for p in info["parameters"]}
    report = c.predict(task="custom", instruction="none", prompt="Rome is in", target="Paris",
                       subject="Rome", kind="city", api_name="/edit_report")
    assert report["request"]["subject"] == "Rome" and report["request"]["prompt"] == "Rome is in"
    ie = report["instructedit"]
    assert set(ie) >= {"scores", "plain", "rephrases", "locality", "blast_radius", "paper_protocol"}
    assert ie["scores"]["generation_success"] == float("Paris" in ie["plain"]["after"])
    blast = ie["blast_radius"]
    assert (blast["subject"], blast["kind"]) == ("Rome", "city")
    neighbours = [p for p in blast["probes"] if p["group"] == "neighbour"]
    assert neighbours and all(p["prompt"].endswith(" is in") and "Rome" not in p["prompt"] for p in neighbours)
    assert blast["counts"]["neighbour"]["total"] == len(neighbours)
    assert blast["counts"]["unrelated"]["total"] == 6
    assert len(rows(c.predict(api_name="/history")[0])) == 1  # the same session's edit, like /edit
    typed = edit(c, task="custom", instruction="none", prompt="Rome is in", subject="Rome", kind="country")
    assert typed["report"]["instructedit"]["blast_radius"]["kind"] == "country"


def test_two_clients_do_not_share_edits(app, tmp_path):
    url, _ = app
    a, b = client(url, tmp_path / "a"), client(url, tmp_path / "b")
    off_b, on_b, _ = b.predict(PROMPT, 6, api_name="/generate")
    edit(a)
    off_a, on_a, note_a = a.predict(PROMPT, 6, api_name="/generate")
    assert text_of(off_a) == text_of(off_b) and text_of(on_a) != text_of(off_a)
    assert "1 active edit" in note_a
    off_b2, on_b2, note_b = b.predict(PROMPT, 6, api_name="/generate")
    assert text_of(on_b2) == text_of(off_b) and "no active edits" in note_b
    history_b = b.predict(api_name="/history")[0]
    assert rows(history_b) == []


def test_undo_reset_and_remove(app, tmp_path):
    url, _ = app
    c = client(url, tmp_path)
    edit(c)
    out = edit(c, prompt="Rome is in", probes="")
    assert len(rows(out["history"])) == 2
    table, summary, _ = c.predict(api_name="/undo")
    assert len(rows(table)) == 1
    first_id = rows(table)[0][1]
    edit(c, prompt="Rome is in")
    table, _, _ = c.predict(first_id, api_name="/remove")
    assert len(rows(table)) == 1 and rows(table)[0][1] != first_id
    table, summary, _ = c.predict(api_name="/reset")
    assert rows(table) == [] and "No active edits" in summary
    with pytest.raises(Exception, match="no edit to undo"):
        c.predict(api_name="/undo")


def test_export_import_round_trip(app, tmp_path):
    url, _ = app
    src, dst = client(url, tmp_path / "src"), client(url, tmp_path / "dst")
    edit(src)
    edit(src, prompt="Rome is in", task="custom", instruction="none")
    path = src.predict(api_name="/export")
    data = json.loads(Path(path).read_text())
    assert [e["prompt"] for e in data["edits"]] == [PROMPT, "Rome is in"]
    table, summary, _ = dst.predict(handle_file(path), api_name="/import")
    assert [r[4] for r in rows(table)] == [PROMPT, "Rome is in"] and "2 active edits" in summary
    assert dst.predict(PROMPT, 6, api_name="/generate")[1] == src.predict(PROMPT, 6, api_name="/generate")[1]


def test_bad_inputs_get_messages_and_change_nothing(app, tmp_path):
    url, _ = app
    c = client(url, tmp_path)
    edit(c)
    with pytest.raises(Exception, match="target is empty"):
        edit(c, target="  ")
    with pytest.raises(Exception, match="limit is 200"):
        edit(c, prompt="x" * 201)
    with pytest.raises(Exception, match="ConvSent needs a topic"):
        edit(c, task="convsent", instruction="0")
    with pytest.raises(Exception, match="Write your instruction"):
        edit(c, instruction="custom")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(Exception, match="not valid JSON"):
        c.predict(handle_file(str(bad)), api_name="/import")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "instructedit-studio-history", "version": 1,
                                 "model_id": "someone/else", "edits": []}))
    with pytest.raises(Exception, match="made on model"):
        c.predict(handle_file(str(other)), api_name="/import")
    for _ in range(2):
        edit(c, probes="")
    with pytest.raises(Exception, match="limit is 3"):
        edit(c)
    assert len(rows(c.predict(api_name="/history")[0])) == 3
