"""A real headless Chromium against the app on the real embedded model (4-bit) and shipped editors.

Debian's /usr/bin/chromium driven by Playwright (never ``playwright install``). Prints the
start-up time and the edit latency seen in the page, and takes a screenshot; with
``INSTRUCTEDIT_UPDATE_SCREENSHOT=1`` (``make screenshot``) it replaces docs/screenshots/edit.png,
so that a plain test run never changes a tracked file.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "screenshots" / "edit.png"
CHECKPOINTS = [ROOT / "checkpoints" / "smollm2-135m" / n for n in ("instructedit", "mend-multitask")]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 600
EDIT_TIMEOUT_S = 600

if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    missing = [str(p) for p in CHECKPOINTS if not (p / "editor.json").is_file()]
    if missing:
        pytest.skip(f"shipped editor checkpoints missing: {missing} (train them first)")
    port = _free_port()
    log_file = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--quant", "4bit"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while not _answers(url):
            if proc.poll() is not None:
                pytest.fail(f"the app exited:\n{log_file.read_text()[-3000:]}")
            if time.perf_counter() - start > START_TIMEOUT_S:
                pytest.fail(f"the app did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.25)
        print(f"\n[timing] app start-up until the page answers: {time.perf_counter() - start:.1f} s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def page(tmp_path):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_counterfact_example_edit(app_url, page, tmp_path):
    from instructedit.data.examples import load_examples

    example = load_examples("counterfact")[0]
    start = time.perf_counter()
    page.goto(app_url)
    page.wait_for_selector("#edit-button", timeout=120_000)
    print(f"[timing] page loaded in the browser: {time.perf_counter() - start:.1f} s")
    assert "SmolLM2-135M" in page.inner_text("#status-line")

    page.get_by_text(example.prompt, exact=True).first.click()
    prompt_box = page.locator("#prompt textarea, #prompt input").first
    page.wait_for_function("p => { const e = document.querySelector('#prompt textarea, #prompt input');"
                           " return e && e.value === p; }", arg=example.prompt, timeout=30_000)
    assert prompt_box.input_value() == example.prompt
    assert example.locality[0].prompt in page.locator("#probes textarea").input_value()

    clicked = time.perf_counter()
    page.click("#edit-button")
    page.wait_for_function("() => { const e = document.querySelector('#ie-summary');"
                           " return e && e.innerText.includes('Reliability'); }",
                           timeout=EDIT_TIMEOUT_S * 1000)
    latency = time.perf_counter() - clicked
    print(f"[timing] edit latency in the page (click to results): {latency:.1f} s")

    after = page.inner_text("#ie-after")
    assert example.target_new.lower() in after.lower(), after
    locality = page.inner_text("#ie-locality")
    assert example.locality[0].prompt in locality
    assert "yes ·" in locality or "no ·" in locality
    assert "1 active edit" in page.inner_text("#history-summary")

    page.wait_for_timeout(500)
    shot = tmp_path / "edit.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a real rendered page, not an empty image
    if os.environ.get("INSTRUCTEDIT_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
