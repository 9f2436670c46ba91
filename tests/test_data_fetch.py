"""``data fetch`` against a local server that answers like the Hugging Face hub (no network).

The server serves tiny files in each benchmark format (from ``tests/data/layout.py``) at the hub's
``/datasets/{repo_id}/resolve/{revision}/{path}`` URLs with the headers ``huggingface_hub``'s
``hf_hub_download`` needs: ``X-Repo-Commit``, ``ETag`` and ``Content-Length`` on HEAD and GET, and
``X-Error-Code: EntryNotFound`` on a 404. ``HF_ENDPOINT`` points at it, set after every import,
so the test also proves the endpoint is read at call time.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from instructedit.data.fetch import SOURCES, FetchError, fetch_data
from instructedit.data.tasks import TASK_FILES, load_task
from tests.cli_helpers import run_main
from tests.data.layout import convsent_file, counterfact_files, recent_file, zsre_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sample_files() -> dict[str, bytes]:
    """Tiny versions of every benchmark file, by data-folder path."""
    rows = counterfact_files()
    rows["recent/recent_train.json"] = recent_file()
    rows["convsent/blender_val.json"] = convsent_file("val", 20)
    rows["convsent/blender_test.json"] = convsent_file("test", 5)
    rows["zsre/ZsRE-test-all.json"] = zsre_file()
    return {dest: json.dumps(r, indent=1).encode() for dest, r in rows.items()}


class Hub:
    """A hub look-alike on 127.0.0.1: ``files`` maps URL paths to bytes; ``seen`` logs requests."""

    def __init__(self, repo_headers: bool = True):
        self.files: dict[str, bytes] = {}
        self.seen: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                path = unquote(urlsplit(self.path).path)
                hub.seen.append((self.command, path))
                data = hub.files.get(path)
                self.send_response(200 if data is not None else 404)
                if repo_headers:
                    self.send_header("X-Repo-Commit", COMMIT)
                if data is None:
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, spec, data: bytes) -> None:
        self.files[f"/datasets/{spec.repo_id}/resolve/main/{spec.path}"] = data

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed (conftest sets HF_HUB_OFFLINE for everything else)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def start_hub(monkeypatch, files: dict[str, bytes] | None = None, **kwargs) -> Hub:
    hub = Hub(**kwargs)
    for spec in SOURCES:
        if files is None or spec.dest in files:
            hub.serve(spec, (files or sample_files())[spec.dest])
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


@pytest.fixture
def hub(monkeypatch, online):
    hub = start_hub(monkeypatch)
    yield hub
    hub.close()


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_sources_cover_the_layout_of_docs_data_md():
    wanted = sorted(path for files in TASK_FILES.values() for path in files.values())
    assert sorted(spec.dest for spec in SOURCES) == wanted
    assert all(len(spec.sha256) == 64 for spec in SOURCES)


def test_fetch_downloads_checks_and_lays_out_every_file(hub, capsys, tmp_path):
    out = tmp_path / "data"
    code, stdout, stderr = run_main(capsys, "data", "fetch", "--out", str(out), "--json")
    assert code == 0, stderr
    results = json.loads(stdout)
    samples = sample_files()
    assert tree(out) == sorted(samples)  # exactly the layout, no temporary or metadata files
    for result in results:
        assert result["status"] == "downloaded" and result["records"] > 0
        assert (out / result["dest"]).read_bytes() == samples[result["dest"]]
        assert result["url"].startswith(hub.url + "/datasets/")
        assert result["matches_reference"] is False  # tiny samples, not the reference copy
    # huggingface_hub asked for metadata (HEAD) and then the bytes (GET) of every file
    for spec in SOURCES:
        path = f"/datasets/{spec.repo_id}/resolve/main/{spec.path}"
        assert ("HEAD", path) in hub.seen and ("GET", path) in hub.seen
    # the project's own split loaders read the result
    assert len(load_task(out, "counterfact").train) > 0
    assert len(load_task(out, "recent").test) > 0
    assert len(load_task(out, "convsent").test) > 0
    assert len(load_task(out, "zsre").test) > 0

    hub.seen.clear()
    code, stdout, _ = run_main(capsys, "data", "fetch", "--out", str(out))
    assert code == 0 and "kept" in stdout and "downloaded" not in stdout
    assert hub.seen == []  # present, readable files are not downloaded again
    code, stdout, _ = run_main(capsys, "data", "fetch", "--out", str(out), "--tasks", "zsre", "--force")
    assert code == 0 and stdout.count("downloaded") == 1 and len(hub.seen) == 2


def test_a_file_equal_to_the_reference_copy_is_reported_so(hub, tmp_path):
    spec = next(s for s in SOURCES if s.task == "zsre")
    data = sample_files()[spec.dest]
    same = replace(spec, sha256=hashlib.sha256(data).hexdigest())
    [result] = fetch_data(tmp_path / "data", tasks=["zsre"], sources=[same])
    assert result.matches_reference and result.status == "downloaded" and result.records == 30


def test_a_missing_file_is_one_clear_line_and_nothing_is_written(monkeypatch, online, capsys, tmp_path):
    files = sample_files()
    del files["zsre/ZsRE-test-all.json"]
    hub = start_hub(monkeypatch, files)
    try:
        code, _, stderr = run_main(capsys, "data", "fetch", "--out", str(tmp_path / "data"), "--tasks", "zsre")
    finally:
        hub.close()
    assert code == 2
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith("error: cannot download zsre/ZsRE-test-all.json from "
                             f"{hub.url}/datasets/zjunlp/KnowEdit/resolve/main/benchmark/ZsRE/ZsRE-test-all.json")
    assert "no such file (HTTP 404)" in stderr
    assert not (tmp_path / "data" / "zsre").exists()


def test_a_file_the_loaders_cannot_read_is_refused_and_the_old_one_kept(monkeypatch, online, capsys, tmp_path):
    out = tmp_path / "data"
    good = sample_files()
    (out / "convsent").mkdir(parents=True)
    (out / "convsent" / "blender_test.json").write_bytes(good["convsent/blender_test.json"])
    bad = dict(good)
    bad["convsent/blender_test.json"] = json.dumps([{"topic": "x", "text": "not convsent"}]).encode()
    hub = start_hub(monkeypatch, bad)
    try:
        code, _, stderr = run_main(capsys, "data", "fetch", "--out", str(out), "--tasks", "convsent", "--force")
    finally:
        hub.close()
    assert code == 2 and "Traceback" not in stderr and stderr.count("\n") == 1
    assert "convsent/blender_test.json" in stderr and "not what the loaders expect" in stderr
    assert (out / "convsent" / "blender_test.json").read_bytes() == good["convsent/blender_test.json"]
    assert tree(out) == ["convsent/blender_test.json", "convsent/blender_val.json"]


def test_a_server_that_is_not_a_hub_is_named(monkeypatch, online, tmp_path):
    hub = start_hub(monkeypatch, repo_headers=False)
    try:
        with pytest.raises(FetchError, match="HF_ENDPOINT"):
            fetch_data(tmp_path / "data", tasks=["zsre"])
    finally:
        hub.close()


def test_offline_mode_is_a_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FetchError, match="HF_HUB_OFFLINE"):
        fetch_data(tmp_path / "data", tasks=["zsre"])


def test_unknown_tasks_are_refused(tmp_path):
    with pytest.raises(FetchError, match="unknown task"):
        fetch_data(tmp_path / "data", tasks=["wikibio"])
