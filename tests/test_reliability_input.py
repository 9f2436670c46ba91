"""Bad input, at the level users hit it (the service layer and ``app.py``'s start-up).

Every case asserts a clear message AND that nothing changed: the base model's outputs are bitwise
equal, the requesting session and a bystander session keep their edits, saved files are
untouched. Core-level checks live in test_editor.py, test_checkpoint.py and test_backbone.py.
"""
from __future__ import annotations

import builtins
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import app as app_module
from instructedit.editing.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from instructedit.editing.editor import Editor, EditRequest
from instructedit.editing.patches import active_patches
from instructedit.model.backbone import BackboneError, load_backbone
from instructedit.web.config import AppConfig, Limits
from instructedit.web.errors import UserError
from instructedit.web.forms import EditForm, build_request
from instructedit.web.history import FORMAT
from instructedit.web.loading import load_app_editor, load_models
from instructedit.web.service import EditService

PROMPT = "The Eiffel Tower is located in"
PROBES = [PROMPT, "Rome is in", "The capital of France is"]
CAP = 3
MAX_CHARS = 200


@pytest.fixture(scope="module")
def backbone(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def editors(backbone):
    return (Editor.untrained(backbone, step_size=0.5),
            Editor.untrained(backbone, step_size=0.5, use_instructions=False))


@pytest.fixture(scope="module")
def checkpoint(backbone, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "editor"
    Editor.untrained(backbone, step_size=0.5).save_pretrained(folder, provenance={"steps": 1})
    return folder


def req(prompt=PROMPT, target="London", **kw) -> EditRequest:
    kw.setdefault("task", "counterfact")
    kw.setdefault("instruction", 0)
    return EditRequest(prompt, target, **kw)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class World:
    """A service with a victim session (the one sending bad input) and a bystander, plus files.

    :meth:`unchanged` asserts that nothing a bad request could touch has changed.
    """

    def __init__(self, backbone, editors, checkpoint, tmp_path):
        limits = Limits(max_new_tokens=5, max_edits_per_session=CAP, max_input_chars=MAX_CHARS, max_lines=3)
        self.service = EditService(backbone, editors[0], editors[1], limits, export_dir=tmp_path / "exports")
        self.backbone, self.checkpoint = backbone, checkpoint
        self.params = {k: v.clone() for k, v in backbone.model.state_dict().items()}
        self.base = self.outputs("fresh-before")
        self.logits = self.base_logits()
        self.service.edit("victim", req(target="Berlin", probes=("Rome is in",)))
        self.service.edit("bystander", req(prompt="Rome is in", target="Madrid"))
        self.export = self.service.export_file("bystander")
        self.files = {"checkpoint": digest(checkpoint), "exports": digest(tmp_path / "exports")}
        self.exports_dir = tmp_path / "exports"
        self.sessions = {s: self.snapshot(s) for s in ("victim", "bystander")}

    def outputs(self, session: str) -> dict[str, tuple[str, str]]:
        return {p: self.service.generate(session, p) for p in PROBES}

    def base_logits(self) -> torch.Tensor:
        ids = self.backbone.tokenizer(PROBES[0], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return self.backbone.model(input_ids=ids).logits

    def snapshot(self, session: str):
        return [e.id for e in self.service.history(session)], self.outputs(session)

    def unchanged(self) -> None:
        assert active_patches() == ()
        assert torch.equal(self.base_logits(), self.logits)
        for key, value in self.backbone.model.state_dict().items():
            assert torch.equal(value, self.params[key]), key
        fresh = self.outputs("fresh-after")
        assert fresh == self.base and all(off == on for off, on in fresh.values())
        self.service.close("fresh-after")
        for session, before in self.sessions.items():
            assert self.snapshot(session) == before, session
        assert digest(self.checkpoint) == self.files["checkpoint"]
        assert digest(self.exports_dir) == self.files["exports"]


@pytest.fixture(scope="module")
def world(backbone, editors, checkpoint, tmp_path_factory):
    """One world for the module: every test must leave it exactly as it found it."""
    return World(backbone, editors, checkpoint, tmp_path_factory.mktemp("world"))


# ----- edit requests -----------------------------------------------------------------------------
@pytest.mark.parametrize("prompt,target,match", [
    ("", "London", "prompt (to wrap )?is empty"),
    ("  \n\t ", "London", "prompt (to wrap )?is empty"),
    (PROMPT, "", "target is empty"),
    (PROMPT, " \u3000 ", "target is empty"),
    ("x" * (MAX_CHARS + 1), "London", f"prompt is {MAX_CHARS + 1} characters long; the limit is {MAX_CHARS}"),
    (PROMPT, "y" * (MAX_CHARS + 1), f"target is {MAX_CHARS + 1} characters long; the limit is {MAX_CHARS}"),
    (PROMPT, "Paris Rome " * 18, r"target is \d+ tokens long; the limit is 64"),
    ("The capital\x00 of France is", "Rome", "prompt contains control characters"),
    (PROMPT, "\x1b[31mRome", "target contains control characters"),
    ("Paris \ud800 is in", "Rome", "prompt is not valid text"),
])
def test_bad_prompt_or_target(world, prompt, target, match):
    with pytest.raises(UserError, match=match):
        world.service.edit("victim", req(prompt, target))
    world.unchanged()


@pytest.mark.parametrize("changes,match", [
    (dict(rephrases=("z" * (MAX_CHARS + 1),)), "rephrases is 201 characters long"),
    (dict(probes=("a", "b", "c", "d")), "4 locality probes; the limit is 3"),
    (dict(task="convsent", topic="t" * (MAX_CHARS + 1), label="positive"), "topic is 201 characters"),
    (dict(task="custom", instruction="Do it. " * 40), "instruction is 280 characters long"),
])
def test_other_fields_beyond_limits(world, changes, match):
    with pytest.raises(UserError, match=match):
        world.service.edit("victim", req(**changes))
    world.unchanged()


@pytest.mark.parametrize("changes,match", [
    (dict(task="convsent", topic=None, label="positive"), r"uses \[TOPIC\] but no topic"),
    (dict(task="convsent", topic="  ", label="positive"), r"uses \[TOPIC\] but no topic"),
    (dict(task="convsent", topic="cats", label=None), r"uses \[LABEL\] but no label"),
    (dict(task="convsent", topic="cats", label="lukewarm"), "positive.*negative|negative.*positive"),
    (dict(task="custom", instruction="Replace the answer with [FOO]."), r"Unknown placeholder.*\[FOO\]"),
    (dict(task="counterfact", instruction="Make [BAR] and [TOPIC] true."), r"Unknown placeholder.*\[BAR\]"),
    (dict(task="custom", instruction="Give a [LABEL] view."), r"uses \[LABEL\] but no label"),
    (dict(task="poetry"), "poetry"),
    (dict(task="counterfact", instruction=42), "out of range"),
])
def test_instruction_problems(world, changes, match):
    with pytest.raises(UserError, match=match):
        world.service.edit("victim", req(**changes))
    world.unchanged()


@pytest.mark.parametrize("form,match", [
    (EditForm("convsent", "0", prompt="What about cats?", target="I love them", label="positive"),
     "ConvSent needs a topic"),
    (EditForm("convsent", "0", prompt="What about cats?", target="I love them", topic="cats", label=""),
     "ConvSent needs a sentiment"),
    (EditForm("custom", "custom", custom_instruction="   ", prompt="a", target="b"), "Write your instruction"),
    (EditForm("custom", "custom", custom_instruction="7", prompt="a", target="b"), "as a sentence"),
    (EditForm("zsre", "99", prompt="a", target="b"), "Pick an instruction"),
    (EditForm("nope", "0", prompt="a", target="b"), "Pick a task"),
])
def test_form_level_messages(form, match):
    with pytest.raises(UserError, match=match):
        build_request(form, MAX_CHARS, 3)


@pytest.mark.parametrize("prompt,target", [
    ("🚀 The Eiffel Tower 🗼 is located in", "Rome 🇮🇹"),
    ("برج إيفل يقع في", "روما"),
    ("Der Eiffelturm 位于 Париж и", "東京 Ελλάδα"),
    ("Zero\u200bwidth, combining e\u0301, RTL mark \u200f and\ttab", "ok\u202eko"),
    ("Line one\nline two is", "three"),
])
def test_unusual_but_valid_text_works_and_round_trips(world, prompt, target):
    out = world.service.edit("unicode", req(prompt, target, rephrases=(prompt + " ?",)))
    assert out.report.wrapped.p_target_after > out.report.wrapped.p_target_before
    assert out.report.model_input.endswith(prompt)
    off, on = world.service.generate("unicode", prompt)
    assert isinstance(off, str) and isinstance(on, str)
    path = world.service.export_file("unicode")
    imported = world.service.import_history("unicode-copy", path.read_bytes())
    assert imported[0].request == out.entry.request  # the exact text survives export and import
    assert world.service.generate("unicode-copy", prompt) == (off, on)
    path.unlink()
    world.service.close("unicode")
    world.service.close("unicode-copy")
    world.unchanged()


def test_generate_bad_input(world):
    for text, match in (("", "empty"), ("   ", "empty"), ("p" * (MAX_CHARS + 1), "limit is 200")):
        with pytest.raises(UserError, match=match):
            world.service.generate("victim", text)
    for tokens in (0, -1, 6, 10**9):
        with pytest.raises(UserError, match="between 1 and 5"):
            world.service.generate("victim", PROMPT, tokens)
    world.unchanged()


def test_generate_unusual_text_works(world):
    for text in ("🚀🗼", "برج إيفل", "tab\there", "zero\u200bwidth", "\x00 null"):
        off, on = world.service.generate("victim", text)
        assert isinstance(off, str) and isinstance(on, str)
    world.unchanged()


def test_unpaired_surrogates_everywhere_get_a_message(world):
    with pytest.raises(UserError, match="not valid text"):
        world.service.generate("victim", "Paris \ud800 is")
    with pytest.raises(UserError, match="not valid text"):
        world.service.edit("victim", req(probes=("Rome \udcff is in",)))
    world.unchanged()


# ----- caps --------------------------------------------------------------------------------------
def test_more_edits_than_the_cap(world):
    for target in ("Madrid", "Rome", "Paris"):
        world.service.edit("full", req(target=target))
    full = world.snapshot("full")
    with pytest.raises(UserError, match=f"already has {CAP} active edits; the limit is {CAP}"):
        world.service.edit("full", req(target="Berlin"))
    data = world.service.export("full")
    data["edits"] = data["edits"] * 2
    with pytest.raises(UserError, match=f"at most {CAP}"):
        world.service.import_history("victim", json.dumps(data))
    assert world.snapshot("full") == full
    world.service.close("full")
    world.unchanged()


def test_nan_edit_is_refused(world, backbone):
    nan_editor = Editor.untrained(backbone, step_size=0.5)
    with torch.no_grad():
        nan_editor.network.log_lr.fill_(float("nan"))
    original, world.service.editor = world.service.editor, nan_editor
    try:
        with pytest.raises(UserError, match="non-finite values.*nothing changed"):
            world.service.edit("victim", req(target="Paris"))
    finally:
        world.service.editor = original
    world.unchanged()


def test_nan_baseline_only_warns(world, backbone):
    nan_editor = Editor.untrained(backbone, step_size=0.5, use_instructions=False)
    with torch.no_grad():
        nan_editor.network.log_lr.fill_(float("nan"))
    original, world.service.baseline = world.service.baseline, nan_editor
    try:
        out = world.service.edit("nan-baseline", req(target="Paris"))
    finally:
        world.service.baseline = original
    assert out.baseline_report is None and "baseline editor failed" in out.baseline_error
    assert out.entry.baseline is None and len(world.service.history("nan-baseline")) == 1
    world.service.close("nan-baseline")
    world.unchanged()


# ----- history import -----------------------------------------------------------------------------
def _history(world, edits, **top):
    return json.dumps({"format": FORMAT, "version": 1, "model_id": world.service.model_id,
                       "edits": edits, **top})


GOOD = {"task": "counterfact", "instruction": 0, "prompt": PROMPT, "target": "Paris"}


@pytest.mark.parametrize("make,match", [
    (lambda w: b"{not json", "not valid JSON"),
    (lambda w: b"\xff\xfe\x00garbage", "not valid JSON"),
    (lambda w: "", "not valid JSON"),
    (lambda w: "[]", "not an InstructEdit Studio history"),
    (lambda w: json.dumps({"format": FORMAT, "version": 99, "model_id": w.service.model_id, "edits": []}),
     "version 99"),
    (lambda w: json.dumps({"format": FORMAT, "version": 1, "model_id": w.service.model_id}), "no 'edits' list"),
    (lambda w: _history(w, {"0": GOOD}), "no 'edits' list"),
    (lambda w: _history(w, ["edit"]), "edit 1 is not an object"),
    (lambda w: _history(w, [{**GOOD, "prompt": 5}]), "field 'prompt'"),
    (lambda w: _history(w, [{**GOOD, "target": "  "}]), "field 'target'"),
    (lambda w: _history(w, [{**GOOD, "rephrases": "one"}]), "field 'rephrases'"),
    (lambda w: _history(w, [{**GOOD, "probes": [1, 2]}]), "field 'probes'"),
    (lambda w: _history(w, [{**GOOD, "instruction": True}]), "field 'instruction'"),
    (lambda w: _history(w, [{**GOOD, "task": "poetry"}]), "unknown task"),
    (lambda w: _history(w, [GOOD, {**GOOD, "prompt": "x" * (MAX_CHARS + 1)}]), "Edit 2 of the file"),
    (lambda w: _history(w, [{**GOOD, "target": "Paris Rome " * 18}]), "could not be re-applied"),
    (lambda w: _history(w, [{**GOOD, "task": "convsent"}]), r"\[TOPIC\]"),
    (lambda w: _history(w, [{**GOOD, "instruction": "Use [FOO]"}]), r"\[FOO\]"),
    (lambda w: json.dumps({"format": FORMAT, "version": 1, "model_id": "someone/other-model",
                           "edits": [GOOD]}), "made on model 'someone/other-model'"),
    (lambda w: " " * 2_000_000, "limit is 1,000,000"),
])
def test_bad_history_imports(world, make, match):
    with pytest.raises(UserError, match=match):
        world.service.import_history("victim", make(world))
    world.unchanged()


def test_deeply_nested_json_import_gets_a_message(world):
    with pytest.raises(UserError, match="not valid JSON"):
        world.service.import_history("victim", "[" * 200_000)
    world.unchanged()


def test_history_with_extra_fields_still_imports(world):
    raw = _history(world, [{**GOOD, "scores": {"x": 1}, "unknown": [1, 2]}], exported_at="whenever")
    entries = world.service.import_history("extra", raw)
    assert [e.request.target for e in entries] == ["Paris"]
    world.service.close("extra")
    world.unchanged()


# ----- start-up: checkpoints, model names, quantization ---------------------------------------------
def _copy(checkpoint: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        (dest / name).write_bytes((checkpoint / name).read_bytes())
    return dest


def _truncate(folder: Path) -> None:
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 3])


def _wrong_shapes(folder: Path) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    name = next(iter(config["modules"]))
    config["modules"][name] = [config["modules"][name][0], 999]
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def _other_backbone(folder: Path) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["backbone"].update(model_id="openai-community/gpt2", family="gpt2", model_type="gpt2")
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def _mixed_saves(folder: Path) -> None:
    data = (folder / WEIGHTS_FILE).read_bytes()
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["weights_sha256"] = hashlib.sha256(data + b"other save").hexdigest()
    (folder / CONFIG_FILE).write_text(json.dumps(config))


@pytest.mark.parametrize("damage,match", [
    (_truncate, "damaged or truncated"),
    (_wrong_shapes, "shape"),
    (_other_backbone, "trained for openai-community/gpt2"),
    (_mixed_saves, "does not match"),
])
def test_bad_editor_checkpoint(damage, match, checkpoint, backbone, tiny_llama_dir, tmp_path, capsys):
    folder = _copy(checkpoint, tmp_path / "bad")
    damage(folder)
    before = digest(folder)
    # named explicitly: refused with the reason (the app stops with one line, exit code 2)
    with pytest.raises(CheckpointError, match=match):
        load_app_editor(str(folder), backbone, role="InstructEdit editor", default="/nowhere",
                    use_instructions=True)
    code = app_module.main(["--model", str(tiny_llama_dir), "--quant", "none", "--device", "cpu",
                            "--editor", str(folder), "--baseline-editor", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    # the shipped default falling short: a plain gradient step and a warning, never a crash
    editor, warning = load_app_editor(str(folder), backbone, role="InstructEdit editor", default=str(folder),
                                  use_instructions=True)
    assert warning and "not usable" in warning and editor.name.startswith("gradient-step")
    assert digest(folder) == before  # nothing rewrote or "repaired" the files


def test_unknown_model_name(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="no-such-model-xyz"):
        load_models(AppConfig(model="no-such-model-xyz", quant="none", device="cpu"))
    code = app_module.main(["--model", "no-such-model-xyz", "--quant", "none", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "no-such-model-xyz" in err[-1]


def _block_by_sys_modules(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)


def _block_by_import(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "bitsandbytes" or name.startswith("bitsandbytes."):
            raise ImportError("libbitsandbytes_cpu.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize("block", [_block_by_sys_modules, _block_by_import])
def test_4bit_without_bitsandbytes(block, monkeypatch, tiny_llama_dir, capsys):
    block(monkeypatch)
    with pytest.raises(BackboneError, match="4bit quantization needs bitsandbytes, which cannot run here"):
        load_backbone(str(tiny_llama_dir), "4bit", device="cpu")
    code = app_module.main(["--model", str(tiny_llama_dir), "--quant", "4bit", "--device", "cpu",
                            "--editor", "none", "--baseline-editor", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "bitsandbytes" in err[-1] and err[-1].startswith("error: ")
