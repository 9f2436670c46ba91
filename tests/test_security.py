"""Security defaults: loopback and no share by default, no file access beyond what the app serves,
no unpickling or eval of input, and bounded queue, uploads and per-session state."""
from __future__ import annotations

import ast
import http.client
import json
import urllib.parse
from pathlib import Path

import pytest

import app as app_module
from instructedit.editing.editor import DEFAULT_PATCH_RANK, Editor, EditRequest
from instructedit.model.backbone import load_backbone
from instructedit.web.app import launch
from instructedit.web.config import AppConfig, Limits
from instructedit.web.errors import UserError
from instructedit.web.service import EditService
from tests.stress import launched_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The Eiffel Tower is located in"


# ----- defaults -----------------------------------------------------------------------------------
def test_parser_defaults_bind_loopback_without_share(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    args = app_module.build_parser().parse_args([])
    assert args.host == "127.0.0.1" and args.share is False
    config = app_module.config_from_args(args)
    assert config.host == "127.0.0.1" and config.share is False
    assert AppConfig().host == "127.0.0.1" and AppConfig().share is False
    opened = app_module.build_parser().parse_args(["--host", "0.0.0.0", "--share"])
    assert opened.host == "0.0.0.0" and opened.share is True
    assert config.patch_rank == DEFAULT_PATCH_RANK
    full = app_module.config_from_args(app_module.build_parser().parse_args(["--patch-rank", "full"]))
    assert full.patch_rank is None


def test_launch_passes_host_share_and_a_bounded_queue():
    seen = {}

    class FakeDemo:
        def queue(self, **kwargs):
            seen["queue"] = kwargs

        def launch(self, **kwargs):
            seen["launch"] = kwargs

    limits = Limits(queue_size=7, concurrency_limit=3)
    launch(FakeDemo(), AppConfig(host="127.0.0.1", port=1234, limits=limits))
    assert seen["launch"]["server_name"] == "127.0.0.1" and seen["launch"]["share"] is False
    assert seen["queue"]["max_size"] == 7 and seen["queue"]["default_concurrency_limit"] == 3


@pytest.mark.parametrize("field,value", [("max_new_tokens", 100_000), ("max_edits_per_session", 10**6),
                                         ("max_input_chars", 10**6), ("queue_size", 10**6),
                                         ("concurrency_limit", 1000), ("max_sessions", 10**7)])
def test_limits_cannot_be_unbounded(field, value):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


# ----- the launched app -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tiny_llama_dir, tmp_path_factory):
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    limits = Limits(max_new_tokens=5, max_edits_per_session=2, max_input_chars=200, max_lines=3)
    service = EditService(backbone, Editor.untrained(backbone, step_size=0.5), None, limits,
                          export_dir=tmp_path_factory.mktemp("exports"))
    with launched_app(service) as url:
        yield url, service


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raw_post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def multipart(name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "----instructedit-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/json\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_app_listens_on_loopback_only(app):
    url, _ = app
    assert urllib.parse.urlsplit(url).hostname == "127.0.0.1"


def _secret_paths(service) -> list[str]:
    export = service.export_file("someone-else")  # another session's exported history
    return ["/etc/passwd", str(ROOT / "app.py"), str(ROOT / "pyproject.toml"), str(export),
            str(Path(service.backbone.source) / "config.json")]


def test_file_route_refuses_paths_outside_what_the_app_serves(app):
    url, service = app
    service.edit("someone-else", EditRequest(PROMPT, "Rome", task="counterfact", instruction=0))
    paths = []
    for secret in _secret_paths(service):
        quoted = urllib.parse.quote(secret)
        paths += [f"/gradio_api/file={secret}", f"/gradio_api/file={quoted}", f"/file={secret}",
                  f"/gradio_api/file/{secret.lstrip('/')}"]
    paths += [
        "/gradio_api/file=../../../../../../../etc/passwd",
        "/gradio_api/file=..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/file=../../etc/passwd",
        "/file=../../../../../../etc/passwd",
        "/gradio_api/file=/tmp/gradio/../../etc/passwd",
        "/gradio_api/file=~/.bashrc",
        "/gradio_api/file=file:///etc/passwd",
        "/static/../../../../etc/passwd",
        "/assets/../../../../etc/passwd",
        "/gradio_api/file=" + urllib.parse.quote(f"{url}/config", safe=""),
        f"/gradio_api/file={url}/config",
        f"/gradio_api/proxy={url}/config",
    ]
    served = []
    for path in paths:
        status, body = raw_get(url, path)
        if status < 400 or b"root:" in body or b"dependencies" in body or b"InstructEdit" in body:
            served.append((path, status, body[:80]))
    assert not served, served


def test_file_route_still_serves_uploads(app):
    """The refusals above are not vacuous: a file the app itself holds is served."""
    url, _ = app
    body, headers = multipart("mine.json", b'{"mine": true}')
    status, answer = raw_post(url, "/gradio_api/upload", body, headers)
    assert status == 200
    path = json.loads(answer)[0]
    status, content = raw_get(url, "/gradio_api/file=" + path)
    assert status == 200 and content == b'{"mine": true}'


def call_api(url: str, api_name: str, data: list) -> str:
    """Gradio's two-step REST API (no client-side file handling): the whole event stream as text."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        posted = http.post(f"/gradio_api/call/{api_name}", json={"data": data})
        posted.raise_for_status()
        return http.get(f"/gradio_api/call/{api_name}/{posted.json()['event_id']}").text


def test_import_cannot_read_server_files(app):
    url, service = app
    service.edit("victim", EditRequest(PROMPT, "Rome", task="counterfact", instruction=0))
    export = service.export_file("victim")
    edits_before = service.stats()["edits"]
    for path in ("/etc/passwd", str(export), "../../../../etc/passwd"):
        payload = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.json"}
        stream = call_api(url, "import", [payload])
        assert "event: error" in stream and "event: complete" not in stream, stream[:300]
        assert "root:" not in stream and "Rome" not in stream
    assert service.stats()["edits"] == edits_before  # nothing of the victim's history came over


def test_generate_token_and_length_caps_hold_over_the_api(app, tmp_path):
    url, _ = app
    c = Client(url, verbose=False, download_files=str(tmp_path), analytics_enabled=False)
    try:
        with pytest.raises(Exception, match="between 1 and 5|maximum|greater"):
            c.predict(PROMPT, 100_000, api_name="/generate")
        with pytest.raises(Exception, match="limit is 200"):
            c.predict("x" * 5000, 5, api_name="/generate")
        with pytest.raises(Exception, match="limit is 3"):
            c.predict("counterfact", "0", "", "", "positive", PROMPT, "Rome", "", "\n".join(["p"] * 10),
                      api_name="/edit")
    finally:
        c.close()


def test_model_endpoints_cannot_skip_the_queue(app):
    url, _ = app
    body = json.dumps({"data": [PROMPT, 5], "session_hash": "direct"}).encode()
    status, answer = raw_post(url, "/gradio_api/run/generate", body, {"Content-Type": "application/json"})
    assert status >= 400, answer[:200]


def test_uploads_are_bounded(app):
    url, service = app
    body, headers = multipart("huge.json", b" " * (service.limits.max_import_bytes + 1))
    status, _ = raw_post(url, "/gradio_api/upload", body, headers)
    assert status == 413


# ----- per-session and global caps ------------------------------------------------------------------
def test_per_session_cap_and_session_count_cap(tiny_llama_dir):
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    limits = Limits(max_new_tokens=5, max_edits_per_session=1, max_sessions=2)
    service = EditService(backbone, Editor.untrained(backbone, step_size=0.5), None, limits)
    request = EditRequest(PROMPT, "Rome", task="counterfact", instruction=0)
    service.edit("a", request)
    with pytest.raises(UserError, match="limit is 1"):
        service.edit("a", request)
    service.edit("b", request)
    with pytest.raises(UserError, match="already holds 2 sessions"):
        service.edit("c", request)
    assert service.stats() == {"sessions": 2, "edits": 2}


def test_total_active_edits_are_capped_across_sessions(tiny_llama_dir):
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    limits = Limits(max_new_tokens=5, max_edits_per_session=2, max_total_edits=3)
    service = EditService(backbone, Editor.untrained(backbone, step_size=0.5), None, limits)
    request = EditRequest(PROMPT, "Rome", task="counterfact", instruction=0)
    for session in ("a", "a", "b"):
        service.edit(session, request)
    with pytest.raises(UserError, match="server already holds 3 active edits.*limit is 3"):
        service.edit("c", request)
    assert service.stats()["edits"] == 3 and service.history("c") == []
    with pytest.raises(UserError, match="server already holds"):
        service.import_history("d", json.dumps(service.export("a")))
    assert service.history("d") == []
    service.undo("a")
    service.edit("c", request)  # room again once an edit is gone


# ----- no pickle, no eval ------------------------------------------------------------------------
def _sources() -> list[Path]:
    files = sorted((ROOT / "instructedit").rglob("*.py")) + [ROOT / "app.py"]
    assert len(files) > 20
    return files


def test_no_pickle_eval_or_exec_in_the_code():
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve") for n in names):
                    problems.append(f"{where}: imports {names}")
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if func in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
                problems.append(f"{where}: calls {func}")
            if func.endswith("torch.load") or func == "load" and "weights_only" in keywords:
                if keywords.get("weights_only") != "True":
                    problems.append(f"{where}: torch.load without weights_only=True")
            if func in ("yaml.load", "os.system", "os.popen") or func.endswith("yaml.unsafe_load"):
                problems.append(f"{where}: calls {func}")
            if func.startswith("subprocess.") and keywords.get("shell") == "True":
                problems.append(f"{where}: subprocess with shell=True")
            if func.endswith("from_pretrained") and keywords.get("trust_remote_code") == "True":
                problems.append(f"{where}: trust_remote_code=True")
    assert not problems, problems


def test_the_scan_would_see_a_violation(tmp_path):
    """The AST checks above catch what they claim to (guards against a vacuous scan)."""
    bad = "import pickle\nimport torch\nx = torch.load('f')\neval('1')\n"
    tree = ast.parse(bad)
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"torch.load", "eval"} <= calls
    assert any(isinstance(n, ast.Import) and n.names[0].name == "pickle" for n in ast.walk(tree))


def test_weights_and_histories_load_without_unpickling(tiny_llama_dir, tmp_path, monkeypatch):
    import pickle

    import torch

    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    editor = Editor.untrained(backbone, step_size=0.5)
    editor.save_pretrained(tmp_path / "ckpt")
    service = EditService(backbone, editor, None, Limits(max_new_tokens=5), export_dir=tmp_path / "exports")
    service.edit("a", EditRequest(PROMPT, "Rome", task="counterfact", instruction=0))
    raw = service.export_file("a").read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    Editor.from_pretrained(tmp_path / "ckpt", backbone)
    assert len(service.import_history("b", raw)) == 1
