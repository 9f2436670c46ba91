"""Faults: a failing request leaves the app serving everyone; interrupted writes lose nothing.

Atomic writes covered here: history export (``write_json_atomic``), the converted-model cache
(``convert_embedded_model`` + completion marker), editor checkpoints, and the trainer's state file.
Training resuming after being killed mid-run is kept by
tests/test_train.py::test_resume_after_interruption_matches_uninterrupted_run.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import instructedit.editing.checkpoint as checkpoint_module
import instructedit.io_utils as io_utils_module
import instructedit.model.backbone as backbone_module
import instructedit.web.history as history_module
import instructedit.web.service as service_module
from instructedit.editing.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from instructedit.editing.editor import Editor, EditRequest
from instructedit.model.backbone import BackboneError, convert_embedded_model, load_backbone
from instructedit.train.trainer import _save_state
from instructedit.web.config import Limits
from instructedit.web.history import write_json_atomic
from instructedit.web.service import EditService
from tests.stress import launched_app, spans_text, table_rows

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

PROMPT = "The Eiffel Tower is located in"
FORM = ("counterfact", "0", "", "", "positive", PROMPT, "Paris", "", "")


@pytest.fixture(scope="module")
def backbone(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


def make_service(backbone, tmp_path) -> EditService:
    limits = Limits(max_new_tokens=5, max_edits_per_session=3, max_input_chars=200, max_lines=3)
    return EditService(backbone, Editor.untrained(backbone, step_size=0.5), None, limits,
                       export_dir=tmp_path / "exports")


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ----- failing requests ---------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


class Panic(BaseException):
    """Like pyo3's PanicException (a Rust panic in a tokenizer): not an ``Exception``."""


def test_failure_inside_an_edit_changes_nothing_and_releases_the_session(backbone, tmp_path, monkeypatch):
    service = make_service(backbone, tmp_path)
    first = service.edit("a", EditRequest(PROMPT, "London", task="counterfact", instruction=0)).entry
    before = service.generate("a", PROMPT)

    def fail(*args, **kwargs):
        raise Boom("disk on fire")

    monkeypatch.setattr(service_module, "measure_edit", fail)  # after the patch was computed
    with pytest.raises(Boom):
        service.edit("a", EditRequest(PROMPT, "Berlin", task="counterfact", instruction=0))
    monkeypatch.undo()
    assert [e.id for e in service.history("a")] == [first.id]
    assert service.generate("a", PROMPT) == before
    done = threading.Event()  # the session lock was released: another request of it goes through
    threading.Thread(target=lambda: (service.undo("a"), done.set()), daemon=True).start()
    assert done.wait(30) and service.history("a") == []


@pytest.fixture(scope="module")
def app(backbone, tmp_path_factory):
    service = make_service(backbone, tmp_path_factory.mktemp("faults"))
    with launched_app(service) as url:
        yield url, service


def client(url: str, tmp_path: Path, name: str) -> Client:
    return Client(url, verbose=False, download_files=str(tmp_path / name), analytics_enabled=False)


def _inject(monkeypatch, service, error: BaseException) -> None:
    """Make the service's generate raise ``error`` for the prompt BOOM (and work for anything else)."""
    real = service.generate

    def sometimes_fails(session_id, prompt, *args, **kwargs):
        if prompt == "BOOM":
            raise error
        return real(session_id, prompt, *args, **kwargs)

    monkeypatch.setattr(service, "generate", sometimes_fails)


def _texts(c: Client) -> list[str]:
    return [spans_text(x) for x in c.predict(PROMPT, 5, api_name="/generate")[:2]]


@pytest.mark.parametrize("error", [Boom("secret /internal/path detail"), Panic("rust panicked")],
                         ids=["exception", "base-exception"])
def test_exception_in_one_request_leaves_the_app_serving_others(app, tmp_path, monkeypatch, error):
    url, service = app
    a, b = client(url, tmp_path, "a"), client(url, tmp_path, "b")
    try:
        a.predict(*FORM, api_name="/edit")
        a_before = _texts(a)
        _inject(monkeypatch, service, error)
        failing = a.submit("BOOM", 5, api_name="/generate")
        if isinstance(error, Exception):
            with pytest.raises(Exception) as info:
                failing.result(timeout=120)
            assert "Something went wrong on the server (Boom)" in str(info.value)
            assert "secret" not in str(info.value) and "Traceback" not in str(info.value)
        # the failing session and everyone else are still served, with their edits as they were
        results = {}
        thread = threading.Thread(target=lambda: results.update(b=_texts(b)))
        thread.start()
        assert _texts(a) == a_before
        thread.join(120)
        assert results["b"] == [a_before[0], a_before[0]]
        assert len(table_rows(a.predict(api_name="/history")[0])) == 1
        a.predict(api_name="/reset")
    finally:
        a.close()
        b.close()


def test_base_exception_in_a_request_still_gets_an_answer(app, tmp_path, monkeypatch):
    url, service = app
    c = client(url, tmp_path, "c")
    try:
        _inject(monkeypatch, service, Panic("rust panicked"))
        with pytest.raises(Exception, match="Something went wrong"):
            c.submit("BOOM", 5, api_name="/generate").result(timeout=10)
    finally:
        c.close()


# ----- atomic writes: history export ---------------------------------------------------------------
def _fail_after_partial(monkeypatch, module, name: str, partial: str):
    """Make ``module.name`` write ``partial`` into its file argument, then fail like a full disk."""
    def broken(obj, handle, *args, **kwargs):
        handle.write(partial)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, name, broken)


def test_history_export_is_atomic(backbone, tmp_path, monkeypatch):
    path = write_json_atomic(tmp_path / "history.json", {"edits": ["old"]})
    old = path.read_bytes()
    _fail_after_partial(monkeypatch, history_module.json, "dump", '{"edits": ["ne')
    with pytest.raises(OSError, match="No space"):
        write_json_atomic(path, {"edits": ["new"]})
    assert path.read_bytes() == old and json.loads(old) == {"edits": ["old"]}
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # no temporary file left

    service = make_service(backbone, tmp_path)
    service.edit("s", EditRequest(PROMPT, "Rome", task="counterfact", instruction=0))
    with pytest.raises(OSError):
        service.export_file("s")
    exported = list((tmp_path / "exports").rglob("*"))
    assert not [p for p in exported if p.is_file()]  # nothing half-written that an import could read
    monkeypatch.undo()
    assert json.loads(service.export_file("s").read_text())["edits"][0]["target"] == "Rome"


# ----- atomic writes: converted-model cache --------------------------------------------------------
class FakeConversion:
    """Stands in for transformers' GGUF loading; ``fail_at`` names the step that breaks."""

    def __init__(self, monkeypatch, tmp_path: Path, fail_at: str | None = None):
        import transformers

        self.calls = 0
        self.fail_at = fail_at
        gguf = tmp_path / "pkg" / backbone_module.SMOLLM2_GGUF
        gguf.parent.mkdir(exist_ok=True)
        gguf.write_bytes(b"GGUF")
        monkeypatch.setattr(backbone_module, "_smollm2_gguf_path", lambda: gguf)
        monkeypatch.setattr(transformers, "AutoTokenizer", SimpleNamespace(from_pretrained=self.tokenizer))
        monkeypatch.setattr(transformers, "AutoModelForCausalLM", SimpleNamespace(from_pretrained=self.model))

    def _writer(self, step: str, name: str, size: int):
        def save_pretrained(folder):
            Path(folder, name).write_bytes(b"w" * (size // 2))
            if self.fail_at == step:
                raise OSError(28, "No space left on device")
            Path(folder, name).write_bytes(b"w" * size)
        return save_pretrained

    def tokenizer(self, *args, **kwargs):
        return SimpleNamespace(save_pretrained=self._writer("tokenizer", "tokenizer.json", 100))

    def model(self, *args, **kwargs):
        self.calls += 1
        return SimpleNamespace(hf_quantizer=None, save_pretrained=self._writer("model", "model.safetensors", 1000))


@pytest.mark.parametrize("fail_at", ["model", "tokenizer", "marker"])
def test_interrupted_conversion_leaves_nothing_trusted(fail_at, tmp_path, monkeypatch):
    FakeConversion(monkeypatch, tmp_path, fail_at)
    if fail_at == "marker":
        def broken_marker(folder):
            Path(folder, backbone_module._COMPLETE_MARKER).write_text('{"sha256": {"model.saf')
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(backbone_module, "_write_complete_marker", broken_marker)
    cache = tmp_path / "cache"
    with pytest.raises(BackboneError, match="No space left on device"):
        convert_embedded_model(cache)
    root = cache / "models"
    assert list(root.iterdir()) == []  # neither a target folder nor a temporary one is left
    monkeypatch.undo()
    fake = FakeConversion(monkeypatch, tmp_path)  # the next run converts from scratch
    target = convert_embedded_model(cache)
    assert fake.calls == 1 and (target / "model.safetensors").stat().st_size == 1000


def test_conversion_cache_trusts_only_complete_folders(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    fake = FakeConversion(monkeypatch, tmp_path)
    target = convert_embedded_model(cache)
    assert fake.calls == 1 and (target / backbone_module._COMPLETE_MARKER).is_file()
    assert convert_embedded_model(cache) == target and fake.calls == 1  # complete: reused as is
    # a file truncated afterwards (or a folder left by an older, interrupted version) is redone
    (target / "model.safetensors").write_bytes(b"w" * 10)
    assert convert_embedded_model(cache) == target and fake.calls == 2
    assert (target / "model.safetensors").stat().st_size == 1000
    (target / backbone_module._COMPLETE_MARKER).unlink()
    convert_embedded_model(cache)
    assert fake.calls == 3
    # a failing re-conversion keeps the previous (untrusted) folder untouched and trusts nothing new
    (target / backbone_module._COMPLETE_MARKER).unlink()
    before = digest(target)
    fake.fail_at = "tokenizer"
    with pytest.raises(BackboneError):
        convert_embedded_model(cache)
    assert digest(target) == before and not backbone_module._folder_is_complete(target)
    assert sorted(p.name for p in (cache / "models").iterdir()) == [target.name]


# ----- atomic writes: editor checkpoints ------------------------------------------------------------
@pytest.fixture
def saved(backbone, tmp_path):
    folder = tmp_path / "editor"
    Editor.untrained(backbone, step_size=0.5).save_pretrained(folder, provenance={"steps": 1})
    return folder


def _no_temporaries(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])


def test_checkpoint_write_failure_keeps_the_old_checkpoint(saved, backbone, monkeypatch):
    before = digest(saved)
    newer = Editor.untrained(backbone, step_size=0.7)

    def broken_save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 64)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", broken_save_file)
    with pytest.raises(OSError):
        newer.save_pretrained(saved)
    monkeypatch.undo()
    assert digest(saved) == before
    _no_temporaries(saved)
    # a config that cannot be written (here: provenance that is not JSON) fails before any file changes
    with pytest.raises(TypeError):
        newer.save_pretrained(saved, provenance={"when": object()})
    assert digest(saved) == before
    _no_temporaries(saved)
    assert Editor.from_pretrained(saved, backbone).name == "gradient-step(0.5)"


def test_crash_between_the_two_files_is_refused_not_trusted(saved, backbone, monkeypatch):
    real_replace = io_utils_module.os.replace  # the checkpoint writes through instructedit.io_utils
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the weights were renamed into place; "killed" before the config
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils_module.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        Editor.untrained(backbone, step_size=0.7).save_pretrained(saved)
    monkeypatch.undo()
    _no_temporaries(saved)
    with pytest.raises(CheckpointError, match="does not match"):
        Editor.from_pretrained(saved, backbone)


def test_checkpoints_without_a_checksum_still_load(saved, backbone):
    config = json.loads((saved / CONFIG_FILE).read_text())
    del config["weights_sha256"]  # written before checksums were recorded
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    assert Editor.from_pretrained(saved, backbone).edit(EditRequest(PROMPT, "Rome")).patch.layers


# ----- atomic writes: training state ------------------------------------------------------------------
def test_training_state_write_failure_keeps_the_old_state(tmp_path, monkeypatch):
    state = tmp_path / "state.pt"
    _save_state(state, {"step": 8, "weights": torch.arange(4.0)})
    before = state.read_bytes()

    def broken_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        _save_state(state, {"step": 16, "weights": torch.zeros(4)})
    monkeypatch.undo()
    assert state.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    loaded = torch.load(state, weights_only=True)
    assert loaded["step"] == 8 and torch.equal(loaded["weights"], torch.arange(4.0))
