"""A real headless Chromium against the app on the real embedded model (4-bit) and shipped editors.

Debian's /usr/bin/chromium driven by Playwright (never ``playwright install``). The app runs with
both comparison editors (``--compare both``: the baseline and ROME). An edit from an example: the
model's answer to the prompt is read ahead and shown once the example fills the form, the edit's
"before" is that text, the prompt as typed now continues with the target, InstructEdit's result shows while ROME is still
computing, then ROME's and the baseline's columns fill in, the blast radius panel renders with its
probes and chart, and the Playground shows the same text for the same sentence; a custom edit
whose subject is typed by hand, then "Where is this fact?" (causal tracing, few samples): the
heatmap and its reading. Prints the start-up time, the edit latencies seen in the page and the
tracing time, and takes a screenshot; with ``INSTRUCTEDIT_UPDATE_SCREENSHOT=1`` (``make screenshot``) it
replaces docs/screenshots/edit.png, so that a plain test run never changes a tracked file.
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
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--quant", "4bit",
                                 "--compare", "both"],
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


def _value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def _wait_value(page, elem_id: str, value: str) -> None:
    page.wait_for_function("([id, v]) => { const e = document.querySelector(`#${id} textarea, #${id} input`);"
                           " return e && e.value === v; }", arg=[elem_id, value], timeout=30_000)


def _shown_text(page, elem_id: str, label: str) -> str:
    """The text of a highlighted-text box without its label."""
    text = page.inner_text(f"#{elem_id}")
    return " ".join(text.replace(label, "", 1).split())


COMPARISONS_DONE = ("() => ['#bl-summary', '#rome-summary'].every(id => { const e = document.querySelector(id);"
                    " return e && e.innerText.trim() && !e.innerText.includes('⏳'); })")


def _edit(page) -> float:
    """Click Edit; return seconds from the click to InstructEdit's first look (the prompt as
    typed before and after) and print the times to its whole result and to the comparisons."""
    clicked = time.perf_counter()
    page.click("#edit-button")
    page.wait_for_function("() => { const s = document.querySelector('#ie-summary');"
                           " return s && s.innerText.includes('Plain reliability'); }",
                           timeout=EDIT_TIMEOUT_S * 1000)
    first = time.perf_counter() - clicked
    page.wait_for_function("() => { const b = document.querySelector('#ie-blast-summary');"
                           " return b && b.innerText.includes('Blast radius'); }",
                           timeout=EDIT_TIMEOUT_S * 1000)
    whole = time.perf_counter() - clicked
    # InstructEdit's result does not wait for ROME (seconds an edit on a CPU)
    assert "⏳ ROME" in page.inner_text("#rome-summary")
    page.wait_for_function(COMPARISONS_DONE, timeout=EDIT_TIMEOUT_S * 1000)
    total = time.perf_counter() - clicked
    print(f"[timing] edit in the page: click to InstructEdit's first result {first:.1f} s, to its "
          f"whole result with the blast radius {whole:.1f} s, to the baseline and ROME {total:.1f} s")
    assert first <= whole <= total
    return first


def test_counterfact_example_edit(app_url, page, tmp_path):
    from instructedit.data.examples import load_examples

    example = load_examples("counterfact")[0]
    start = time.perf_counter()
    page.goto(app_url)
    page.wait_for_selector("#edit-button", timeout=120_000)
    print(f"[timing] page loaded in the browser: {time.perf_counter() - start:.1f} s")
    assert "SmolLM2-135M" in page.inner_text("#status-line") and "ROME layer" in page.inner_text("#status-line")
    assert page.locator("#rome-column").is_visible() and page.locator("#bl-column").is_visible()

    page.get_by_text(example.prompt, exact=True).first.click()
    _wait_value(page, "prompt", example.prompt)
    _wait_value(page, "subject", example.subject)  # the example's subject, kept by the guesser
    assert example.locality[0].prompt in page.locator("#probes textarea").input_value()
    # while the user reads the form, the model's answer to the prompt is read ahead and shown
    page.wait_for_function("([p]) => { const e = document.querySelector('#now-says textarea');"
                           " return e && e.value.startsWith(p) && e.value.length > p.length; }",
                           arg=[example.prompt], timeout=EDIT_TIMEOUT_S * 1000)
    read_ahead = _value(page, "now-says")[len(example.prompt):]

    _edit(page)
    # the edit's "before" is the continuation read ahead (the same text, not generated again)
    assert _shown_text(page, "ie-before", "Before the edit") == " ".join(read_ahead.split())
    # what the model now says: the prompt as typed, continued with the target
    after = _shown_text(page, "ie-after", "After the edit")
    assert example.target_new.lower() in after.lower(), after
    assert "Says " in page.inner_text("#ie-summary")
    locality = page.inner_text("#ie-locality")
    assert example.locality[0].prompt in locality
    assert any(v in locality for v in ("same answer", "changed", "now says"))
    assert "p(" in locality  # teacher-forced figures say what they measure

    # the blast radius: summary, every probe, the chart
    summary = page.inner_text("#ie-blast-summary")
    assert "neighbours" in summary and "unrelated" in summary and example.subject in summary
    blast = page.inner_text("#ie-blast")
    assert "is a professional" in blast and "The capital of Germany is" in blast  # neighbours, unrelated
    assert f"{example.subject} was born in" in blast  # another fact about the same subject
    page.wait_for_selector("#ie-blast-chart img", timeout=30_000)
    history = page.inner_text("#history")
    assert "1 active edit" in page.inner_text("#history-summary") and "nbr " in history
    assert "ROME: says it" in history
    # ROME's column: the same edit at the example's subject
    assert "Plain reliability" in page.inner_text("#rome-summary")
    assert _shown_text(page, "rome-before", "Before the edit") == _shown_text(page, "ie-before", "Before the edit")

    # what the editor read, in the details
    page.get_by_text("What the editor read", exact=False).first.click()
    page.wait_for_selector("#ie-input textarea", state="visible", timeout=30_000)
    assert page.locator("#ie-input textarea").input_value().startswith("Task: counterfact")
    assert "paper protocol" in page.inner_text("#ie-paper")

    page.wait_for_timeout(500)
    shot = tmp_path / "edit.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a real rendered page, not an empty image
    if os.environ.get("INSTRUCTEDIT_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # the Playground agrees with the Edit tab on the same sentence
    page.get_by_role("tab", name="Playground").click()
    page.locator("#play-prompt textarea, #play-prompt input").first.fill(example.prompt)
    page.click("#generate-button")
    page.wait_for_function("() => { const e = document.querySelector('#play-note');"
                           " return e && e.innerText.includes('active edit'); }", timeout=EDIT_TIMEOUT_S * 1000)
    assert _shown_text(page, "play-on", "With your edits") == after


def test_custom_edit_with_a_typed_subject(app_url, page):
    prompt = "Built by the Romans, the Colosseum is located in the city of"
    page.goto(app_url)
    page.wait_for_selector("#edit-button", timeout=120_000)
    page.get_by_text("Custom", exact=True).first.click()
    page.locator("#prompt textarea, #prompt input").first.fill(prompt)
    _wait_value(page, "subject", "Built")  # the guess (the longest capitalised run) is wrong here
    page.locator("#subject textarea, #subject input").first.fill("Colosseum")  # so the user types one
    page.locator("#target textarea, #target input").first.fill("Paris")
    page.wait_for_timeout(1000)  # the kind follows the typed subject
    _edit(page)
    summary = page.inner_text("#ie-blast-summary")
    assert "other facts about Colosseum" in summary and "landmark" in summary, summary
    blast = page.inner_text("#ie-blast")
    assert "the Eiffel Tower is located in the city of" in blast  # the same sentence, another landmark
    assert "Colosseum was built in" in blast  # another fact about the typed subject
    page.wait_for_selector("#ie-blast-chart img", timeout=30_000)
    assert "Plain reliability" in page.inner_text("#rome-summary")  # ROME edits the typed subject

    # where is this fact? causal tracing of the prompt and subject, on the unedited model
    page.get_by_text("Where is this fact?", exact=False).first.click()
    page.wait_for_selector("#trace-button", state="visible", timeout=30_000)
    clicked = time.perf_counter()
    page.click("#trace-button")
    page.wait_for_selector("#trace-heatmap img", timeout=EDIT_TIMEOUT_S * 1000)
    page.wait_for_function("() => { const e = document.querySelector('#trace-summary');"
                           " return e && e.innerText.includes('Where is this fact?'); }", timeout=30_000)
    print(f"[timing] causal tracing in the page (click to heatmap): {time.perf_counter() - clicked:.1f} s")
    reading = page.inner_text("#trace-summary")
    assert "p(" in reading and "clean" in reading and "Colosseum" in reading, reading
    assert "the unedited model (your 1 active edit is not applied)" in reading
    assert page.locator("#trace-heatmap img").evaluate("img => img.naturalWidth") > 300
