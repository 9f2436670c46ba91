"""The Gradio page. The only module of the package that imports Gradio.

:func:`build_demo` takes an :class:`~instructedit.web.service.EditService` (which holds the shared
backbone and editors), so tests can pass tiny models; :func:`launch` applies the queue, theme and
CSS (Gradio 6 takes theme and css in ``launch()``).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ..data.examples import load_examples
from ..instructions import TASKS, get_task
from ..measuring.single import EditReport
from .blast import AUTO_KIND
from .charts import blast_chart
from .comparison import SLOT_INFO, SLOTS
from .config import AppConfig, Limits
from .diff import ADDED, REMOVED, word_diff
from .errors import UserError
from .forms import (
    LABELS,
    EditForm,
    build_request,
    default_instruction,
    instruction_options,
    kind_choice,
    kind_options,
    preview_inputs,
    subject_for,
    task_options,
)
from .pages import ABOUT, CITATION, INTRO, MISSING_RESULTS, TITLE, ResultsContent, diagram_html
from .report import edit_payload
from .service import EditOutcome, EditService
from .tracing_view import trace_markdown
from .views import (
    BLAST_WIDTHS,
    PROBE_WIDTHS,
    REPHRASE_WIDTHS,
    WRAPPED_WIDTHS,
    blast_markdown,
    blast_table,
    history_choices,
    history_summary,
    history_table,
    history_widths,
    paper_summary,
    probe_table,
    rephrase_table,
    report_summary,
    wrapped_table,
)

log = logging.getLogger(__name__)

MODEL_QUEUE = "model"  # every event that runs the model shares this concurrency id
DIFF_COLORS = {REMOVED: "#fca5a5", ADDED: "#86efac"}
RESULT_MIN_WIDTH = 220  # InstructEdit and two comparison columns side by side on a laptop screen
CSS = """
.ie-status { font-size: 0.9em; opacity: 0.9; }
.ie-diagram svg { width: 100%; height: auto; }
"""
CUSTOM_EXAMPLES = [
    ["The Eiffel Tower is located in", "Rome", "The Eiffel Tower stands in", "The capital of France is",
     "", "positive", "Eiffel Tower"],
    ["The best pizza topping is", "pineapple", "My favourite pizza topping is",
     "The capital of France is\nWater boils at a temperature of", "", "positive", "pizza topping"],
    ["The chemical symbol for gold is", "Gd", "Gold's chemical symbol is",
     "The chemical symbol for iron is\nThe Eiffel Tower is in", "", "positive", "gold"],
]
EDITOR_FIELDS = ("before", "after", "summary", "rephrases", "locality", "input", "read_before", "read_after",
                 "paper", "read_rephrases", "blast_summary", "blast_chart", "blast")
"""The components of one editor's results (``ie_before``, ``bl_before``, ``rome_before``, ...)."""
EDIT_OUTPUTS = (
    "report",
    "ie_before", "ie_after", "ie_summary", "bl_before", "bl_after", "bl_summary",
    "ie_rephrases", "ie_locality", "bl_rephrases", "bl_locality",
    "ie_input", "ie_read_before", "ie_read_after", "ie_paper", "ie_read_rephrases",
    "bl_input", "bl_read_before", "bl_read_after", "bl_paper", "bl_read_rephrases",
    "ie_blast_summary", "ie_blast_chart", "ie_blast", "bl_blast_summary", "bl_blast_chart", "bl_blast",
    "history", "history_summary", "remove_choice",
    *(f"rome_{name}" for name in EDITOR_FIELDS),
)
"""The outputs of ``/edit`` in order (the first is the report as one JSON object; ROME's last)."""


@contextlib.contextmanager
def _user_facing(name: str) -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    except gr.Error:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # also e.g. a tokenizer's Rust panic, which is no Exception
        log.exception("request failed in %s", name)
        raise gr.Error(f"Something went wrong on the server ({type(exc).__name__}); it was "
                       "logged. Your edits are unchanged.", print_exception=False) from None


def guarded(fn: Callable) -> Callable:
    """Show :class:`UserError` as its sentence and any other failure as a generic one (for
    functions and generators alike).

    A failing request never takes the app down and never shows a stack trace to the user.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            with _user_facing(fn.__name__):
                yield from fn(*args, **kwargs)
        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _user_facing(fn.__name__):
            return fn(*args, **kwargs)
    return wrapper


def in_steps(run: Callable[[Callable[[Any], None]], Any]) -> Iterator[Any]:
    """Yield what ``run(early)`` hands to ``early``, then what it returns.

    ``run`` works in a thread of its own (with this request's context, so Gradio's progress and
    messages still reach the page), which keeps its locks in one thread while the caller, a
    Gradio generator, may resume in another between its steps.
    """
    steps: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            steps.put((True, run(lambda value: steps.put((False, value)))))
        except BaseException as exc:  # handed to the caller, who raises it
            steps.put((True, exc))

    threading.Thread(target=contextvars.copy_context().run, args=(work,), name="edit", daemon=True).start()
    while True:
        done, value = steps.get()
        if isinstance(value, BaseException):
            raise value
        yield value
        if done:
            return


def session_of(request: gr.Request | None) -> str:
    sid = getattr(request, "session_hash", None)
    if not sid:
        raise UserError("This request has no session; reload the page.")
    return sid


def example_rows(task: str) -> list[list[Any]]:
    """Rows of the task's gr.Examples: prompt, target, rephrases, probes, topic, label, subject.

    (The sentiment radio accepts only its choices, so rows without one get its default.)
    """
    if task == "custom":
        return CUSTOM_EXAMPLES
    return [[r.prompt, r.target_new, "\n".join(r.rephrases), "\n".join(p.prompt for p in r.locality),
             r.topic or "", r.label or "positive", r.subject or r.topic or ""] for r in load_examples(task)]


def _results_markdown(results: ResultsContent) -> str:
    if not results.markdown:
        return MISSING_RESULTS if not results.figures else ""
    # figures are shown below as images: drop markdown image lines whose paths would not resolve
    return re.sub(r"^\s*!\[[^\]]*\]\([^)]*\)\s*$", "", results.markdown, flags=re.MULTILINE)


FORM_FIELDS = ("task", "instruction", "custom_instruction", "topic", "label", "prompt", "target",
               "rephrases", "probes", "subject", "kind")
"""The edit form's components (the inputs of ``/edit``), in order."""
FIRST_TASK = "counterfact"


@dataclass
class _Page:
    """What the builders of the page share: the service, its limits, the comparison editors shown
    (fixed at start), the subject catalog, and every component an event reads or writes, by name
    (``ui``; the outputs of ``/edit`` under the names of :data:`EDIT_OUTPUTS`)."""

    service: EditService
    limits: Limits
    shown: list[str]
    catalog: Any
    ui: dict[str, gr.components.Component] = field(default_factory=dict)
    example_cols: dict[str, gr.Column] = field(default_factory=dict)  # task -> its examples
    examples: list[gr.Examples] = field(default_factory=list)

    @property
    def max_chars(self) -> int:
        return self.limits.max_input_chars

    @property
    def list_chars(self) -> int:
        return self.max_chars * self.limits.max_lines + self.limits.max_lines

    @property
    def form_inputs(self) -> list[gr.components.Component]:
        """The edit form's fields in the order of :class:`~instructedit.web.forms.EditForm`."""
        return [self.ui[name] for name in FORM_FIELDS]

    @property
    def history_outputs(self) -> list[gr.components.Component]:
        return [self.ui["history"], self.ui["history_summary"], self.ui["remove_choice"]]


def build_demo(service: EditService, status: str, results: ResultsContent | None = None) -> gr.Blocks:
    """The page: Edit (form, results, blast radius, where the fact is, history), Playground,
    Results and About tabs."""
    page = _Page(service, service.limits, [slot for slot, _ in service.comparisons()],
                 service.blast.catalog)
    results = results or ResultsContent(None)

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        gr.Markdown(status, elem_classes="ie-status", elem_id="status-line")
        with gr.Tab("Edit", id="edit"):
            with gr.Row(equal_height=False):
                _edit_form(page)
                _edit_results(page)
            _history_panel(page)
        with gr.Tab("Playground", id="playground"):
            _playground_tab(page)
        with gr.Tab("Results", id="results"):
            _results_tab(results)
        with gr.Tab("About", id="about"):
            _about_tab()

        _wire_form(page)
        _wire_read_ahead(page)
        _wire_edit(page)
        _wire_history(page, demo)
        _wire_trace(page)
        _wire_import(page)
        _wire_playground(page)

        def on_unload(request: gr.Request):
            sid = getattr(request, "session_hash", None)
            if sid:
                service.close(sid)

        demo.unload(on_unload)
    return demo


# ----- layout -----------------------------------------------------------------------------------
def _edit_form(page: _Page) -> None:
    """The Edit tab's left column: task, instruction, prompt, target, subject, probes, the Edit
    button and each task's examples."""
    ui, max_chars, list_chars = page.ui, page.max_chars, page.list_chars
    with gr.Column(scale=2, min_width=340):
        ui["task"] = gr.Radio(task_options(), value=FIRST_TASK, label="Task",
                              info="What kind of edit. ZsRE was held out of training: it tests "
                                   "whether the editor carries over to a new task.",
                              elem_id="task")
        ui["task_help"] = gr.Markdown(get_task(FIRST_TASK).description)
        ui["instruction"] = gr.Dropdown(instruction_options(FIRST_TASK),
                                        value=default_instruction(FIRST_TASK), label="Instruction",
                                        info="Tells the editor what kind of edit this is. 1-9 were "
                                             "seen in training; 'held out' was not.",
                                        elem_id="instruction")
        ui["custom_instruction"] = gr.Textbox(label="Your instruction", visible=False,
                                              max_length=max_chars, lines=2,
                                              placeholder="e.g. Replace the answer with a new one.",
                                              info="One sentence describing the edit.")
        with gr.Row(visible=False) as convsent_row:
            ui["topic"] = gr.Textbox(label="Topic", max_length=max_chars,
                                     info="Fills [TOPIC] in the instruction.")
            ui["label"] = gr.Radio(list(LABELS), value="positive", label="Sentiment",
                                   info="Fills [LABEL]: the opinion to adopt.")
        ui["convsent_row"] = convsent_row
        ui["prompt"] = gr.Textbox(label="Prompt", max_length=max_chars, elem_id="prompt",
                                  info="The text whose continuation should change.")
        ui["now_says"] = gr.Textbox(label="The model now says (before this edit)", interactive=False,
                                    lines=2, elem_id="now-says",
                                    info="Read ahead when you pick an example or leave the prompt "
                                         "box (with your earlier edits), so the edit's first answer "
                                         "comes sooner.")
        ui["target"] = gr.Textbox(label="Target", max_length=max_chars, elem_id="target",
                                  info="The new answer the model should give after the prompt.")
        with gr.Row():
            ui["subject"] = gr.Textbox("", label="Subject", max_length=max_chars, scale=2, elem_id="subject",
                                       info="What the edit is about (guessed from the prompt; "
                                            "edit it). The blast radius probes other subjects in "
                                            "the same sentence and other facts about this one.")
            ui["kind"] = gr.Dropdown(kind_options(page.catalog), value=AUTO_KIND, label="Kind of subject",
                                     scale=1, elem_id="kind",
                                     info="Which list of comparable subjects to probe.")
        ui["rephrases"] = gr.Textbox(label="Rephrases (optional, one per line)", lines=2,
                                     max_length=list_chars, elem_id="rephrases",
                                     info="Other ways to ask: should get the target too "
                                          "(generalization).")
        ui["probes"] = gr.Textbox(label="Locality probes (optional, one per line)", lines=2,
                                  max_length=list_chars, elem_id="probes",
                                  info="Unrelated prompts whose answers should not change "
                                       "(locality).")
        ui["edit_btn"] = gr.Button("Edit", variant="primary", elem_id="edit-button")
        example_inputs = [ui[name] for name in ("prompt", "target", "rephrases", "probes", "topic", "label",
                                                "subject")]
        for name, spec in TASKS.items():
            with gr.Column(visible=name == FIRST_TASK) as col:
                visible_cols = [0, 1, 4, 5] if spec.needs_topic_and_label else [0, 1]
                page.examples.append(
                    gr.Examples(example_rows(name), example_inputs, visible_columns=visible_cols,
                                label=f"{spec.display_name} examples (click one to fill the form)",
                                examples_per_page=6))
            page.example_cols[name] = col


def _edit_results(page: _Page) -> None:
    """The Edit tab's right column: each editor's result, tables, what it read, blast radius,
    causal tracing and the full JSON report."""
    out, shown = page.ui, page.shown
    with gr.Column(scale=3, min_width=420):
        gr.Markdown("#### What the model now says\nThe prompt as typed, continued before and "
                    "after the edit: what the Playground shows.")
        with gr.Row(equal_height=False):
            with gr.Column(min_width=RESULT_MIN_WIDTH):
                _result_column("InstructEdit", "ie", out)
            for slot in SLOTS:
                with gr.Column(visible=slot in shown, min_width=RESULT_MIN_WIDTH,
                               elem_id=f"{SLOT_INFO[slot].key}-column"):
                    _result_column(SLOT_INFO[slot].title, SLOT_INFO[slot].key, out)
        _tables("InstructEdit", "ie", out)
        for slot in SLOTS:
            with gr.Group(visible=slot in shown):
                _tables(SLOT_INFO[slot].label, SLOT_INFO[slot].key, out, open_=False)
        with gr.Accordion("What the editor read: the instruction-wrapped input and its "
                          "continuation (paper protocol)", open=False, elem_id="editor-read"):
            with gr.Row(equal_height=False):
                with gr.Column():
                    _read_column("InstructEdit's input", "ie", out,
                                 "Exactly what the model reads when the edit is made.")
                for slot in SLOTS:
                    with gr.Column(visible=slot in shown):
                        _read_column(f"{SLOT_INFO[slot].label}'s input", SLOT_INFO[slot].key, out,
                                     SLOT_INFO[slot].reads)
        gr.Markdown("### Blast radius\nAfter every edit, without typing anything: the same "
                    "sentence with other subjects, other facts about the same subject, and a "
                    "fixed panel of unrelated facts, before and after.")
        _blast_panel("ie", out)
        for slot in SLOTS:
            with gr.Group(visible=slot in shown):
                with gr.Accordion(f"{SLOT_INFO[slot].label}: blast radius", open=False):
                    _blast_panel(SLOT_INFO[slot].key, out)
        _trace_panel(out)
        with gr.Accordion("Full report (JSON)", open=False):
            out["report"] = gr.JSON(label="Report", elem_id="report")


def _trace_panel(ui: dict) -> None:
    """Where is this fact? Causal tracing of the prompt on the unedited model."""
    with gr.Accordion("Where is this fact? Causal tracing of the prompt", open=False,
                      elem_id="trace-panel"):
        gr.Markdown("Which layers and tokens of the **unedited** model carry the answer to "
                    "the prompt above: noise hides the subject's words, then each layer's "
                    "state at each token is put back in turn (Meng et al. 2022). Your "
                    "edits are not applied. Takes 10-60 s on a CPU.")
        ui["trace_btn"] = gr.Button("Trace the prompt", elem_id="trace-button")
        ui["trace_text"] = gr.Markdown(elem_id="trace-summary")
        ui["trace_image"] = gr.Image(label="Causal trace: the answer's probability with one state "
                                           "restored (rows: tokens; columns: layers)", show_label=False,
                                     type="filepath", interactive=False, elem_id="trace-heatmap")


def _history_panel(page: _Page) -> None:
    """Your edits: the session's active edits, undo / remove / reset, export and import."""
    ui, limits, shown = page.ui, page.limits, page.shown
    gr.Markdown("### Your edits")
    ui["history_summary"] = gr.Markdown(history_summary([], limits.max_edits_per_session),
                                        elem_id="history-summary")
    ui["history"] = gr.Dataframe(history_table([], shown), interactive=False, wrap=True, elem_id="history",
                                 label="Active edits (oldest first; says it: the continuation of "
                                       "the prompt as typed contains the target; blast radius: "
                                       "changed / probed)", column_widths=history_widths(shown))
    with gr.Row():
        ui["undo_btn"] = gr.Button("Undo last edit", elem_id="undo-button")
        ui["remove_choice"] = gr.Dropdown([], label="Edit to remove", scale=2, elem_id="remove-choice",
                                          info="Later edits stay; they were made on top of it.")
        ui["remove_btn"] = gr.Button("Remove", elem_id="remove-button")
        ui["reset_btn"] = gr.Button("Reset all", variant="stop", elem_id="reset-button")
    with gr.Row():
        ui["export_btn"] = gr.Button("Export history (JSON)", elem_id="export-button")
        ui["import_btn"] = gr.UploadButton("Import history (JSON)", file_types=[".json"], type="filepath",
                                           elem_id="import-button")
    ui["export_file"] = gr.File(label="Exported history (click the name to download)", interactive=False,
                                height=90, elem_id="export-file")
    gr.Markdown("Import replaces this session's edits with the file's, recomputed on this model "
                "(the file must come from the same model).")


def _playground_tab(page: _Page) -> None:
    """Any prompt, continued without and with the session's active edits."""
    ui = page.ui
    gr.Markdown("Type any prompt and compare the model without and with your active edits.")
    with gr.Row():
        ui["play_prompt"] = gr.Textbox(label="Prompt", max_length=page.max_chars, scale=4,
                                       elem_id="play-prompt",
                                       info="Any text; the model continues it greedily.")
        ui["play_tokens"] = gr.Slider(1, page.limits.max_new_tokens, value=page.limits.max_new_tokens,
                                      step=1, label="New tokens", info="How much text to generate.",
                                      scale=1)
    ui["play_btn"] = gr.Button("Generate", variant="primary", elem_id="generate-button")
    with gr.Row():
        ui["play_off"] = gr.HighlightedText(label="Without your edits", color_map=DIFF_COLORS,
                                            show_inline_category=False, elem_id="play-off")
        ui["play_on"] = gr.HighlightedText(label="With your edits", color_map=DIFF_COLORS,
                                           show_inline_category=False, elem_id="play-on")
    ui["play_note"] = gr.Markdown(elem_id="play-note")


def _results_tab(results: ResultsContent) -> None:
    """docs/results.md and its figures."""
    gr.Markdown(_results_markdown(results))
    for figure in results.figures:
        gr.Image(str(figure), label=figure.stem.replace("_", " "), interactive=False)


def _about_tab() -> None:
    gr.HTML(diagram_html())
    gr.Markdown(ABOUT)
    gr.Code(CITATION, language=None, label="BibTeX", interactive=False)


# ----- events -----------------------------------------------------------------------------------
def _make_form(*values) -> EditForm:
    return EditForm(*[v if v is not None else "" for v in values])


def _history_values(page: _Page, entries) -> tuple:
    """The history table, its summary and the remove dropdown for ``entries``."""
    choices = history_choices(entries)
    return (history_table(entries, page.shown), history_summary(entries, page.limits.max_edits_per_session),
            gr.Dropdown(choices=choices, value=choices[-1][1] if choices else None))


def _run_edit(page: _Page, form: EditForm, request: gr.Request | None, progress=None,
              on_update: Callable[[EditOutcome], None] | None = None) -> EditOutcome:
    req = build_request(form, page.max_chars, page.limits.max_lines)
    report = (lambda f, msg: progress(f, desc=msg)) if progress is not None else None
    outcome = page.service.edit(session_of(request), req, progress=report,
                                kind=kind_choice(form, page.catalog), on_update=on_update)
    for slot in page.shown:
        error = outcome.compared(slot)[1]
        if error:
            gr.Warning(error)
    return outcome


def _wire_form(page: _Page) -> None:
    """The form's live updates: the task's instructions, examples and fields, the inputs preview,
    the subject guessed from the prompt and its kind (private: no API)."""
    ui, catalog, max_chars = page.ui, page.catalog, page.max_chars
    example_cols = page.example_cols

    def on_task(name: str):
        spec = get_task(name)
        return (gr.Dropdown(choices=instruction_options(name), value=default_instruction(name)),
                spec.description, gr.Row(visible=spec.needs_topic_and_label),
                *[gr.Column(visible=n == name) for n in example_cols])

    ui["task"].change(on_task, ui["task"], [ui["instruction"], ui["task_help"], ui["convsent_row"],
                                            *example_cols.values()],
                      queue=False, show_progress="hidden", api_visibility="private")
    ui["instruction"].change(lambda c: gr.Textbox(visible=c == "custom"), ui["instruction"],
                             ui["custom_instruction"], queue=False, show_progress="hidden",
                             api_visibility="private")

    def on_preview(task_, instruction_, custom_, topic_, label_, prompt_, target_, rephrases_, probes_,
                   subject_, kind_):
        form = _make_form(task_, instruction_, custom_, topic_, label_, prompt_, target_, rephrases_, probes_,
                          subject_, kind_)
        wrapped, plain = preview_inputs(form, max_chars, page.limits.max_lines)
        return wrapped, plain, plain  # the baseline and ROME read the prompt as typed

    form_inputs = page.form_inputs
    gr.on([c.change for c in form_inputs[:6]], on_preview, form_inputs,
          [ui["ie_input"], ui["bl_input"], ui["rome_input"]],
          queue=False, show_progress="hidden", api_visibility="private", trigger_mode="always_last")

    def on_prompt(prompt_: str | None, subject_: str | None):
        guess = subject_for(prompt_ or "", subject_)
        return gr.skip() if guess == (subject_ or "").strip() else guess

    prompt, subject = ui["prompt"], ui["subject"]
    prompt.change(on_prompt, [prompt, subject], subject, queue=False, show_progress="hidden",
                  api_visibility="private", trigger_mode="always_last")
    subject.change(lambda s, p: catalog.guess_kind(s or "", p or "") if (s or "").strip() else AUTO_KIND,
                   [subject, prompt], ui["kind"], queue=False, show_progress="hidden",
                   api_visibility="private", trigger_mode="always_last")


def _wire_read_ahead(page: _Page) -> None:
    """When an example fills the form or the prompt box is left, continue the prompt with the
    session's edits and show it (:meth:`EditService.read_ahead`): the edit clicked next finds its
    "before" known (private: no API; one at a time, the latest prompt wins)."""
    ui, service = page.ui, page.service

    def on_read_ahead(prompt_: str | None, request: gr.Request):
        text = (prompt_ or "").strip()
        if not text:
            return ""
        try:
            return text + service.read_ahead(session_of(request), text)
        except UserError:
            return ""  # the Edit button says why, if the user goes on with this prompt

    options = dict(show_progress="hidden", api_visibility="private", trigger_mode="always_last",
                   concurrency_id="read_ahead", concurrency_limit=1)
    gr.on([ui["prompt"].blur, ui["prompt"].submit], on_read_ahead, ui["prompt"], ui["now_says"], **options)
    for examples in page.examples:
        examples.load_input_event.then(on_read_ahead, ui["prompt"], ui["now_says"], **options)


def _wire_edit(page: _Page) -> None:
    """``/edit`` (the page's Edit button, streamed in steps) and ``/edit_report`` (the same edit,
    its report only, for API users)."""
    ui, limits = page.ui, page.limits

    @guarded
    def on_edit(task_, instruction_, custom_, topic_, label_, prompt_, target_, rephrases_, probes_,
                subject_, kind_, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """InstructEdit's first look (the prompt as typed before and after) as soon as it is
        measured, then its whole report with the blast radius, then the comparison editors'
        (ROME takes seconds) with the history: the last step is the whole result."""
        form = _make_form(task_, instruction_, custom_, topic_, label_, prompt_, target_, rephrases_, probes_,
                          subject_, kind_)
        for outcome in in_steps(lambda early: _run_edit(page, form, request, progress, on_update=early)):
            fields = _edit_fields(outcome)
            fields.update(zip(("history", "history_summary", "remove_choice"),
                              _history_values(page, outcome.history), strict=True))
            yield tuple(fields[name] for name in EDIT_OUTPUTS)

    gr.on([ui["edit_btn"].click, ui["target"].submit], on_edit, page.form_inputs,
          [ui[name] for name in EDIT_OUTPUTS], api_name="edit", concurrency_id=MODEL_QUEUE,
          concurrency_limit=limits.concurrency_limit, scroll_to_output=False)

    @guarded
    def edit_report(task: str = FIRST_TASK, instruction: str = "0", prompt: str = "", target: str = "",
                    rephrases: str = "", probes: str = "", subject: str = "", kind: str = AUTO_KIND,
                    custom_instruction: str = "", topic: str = "", sentiment: str = "positive",
                    request: gr.Request = None) -> dict:
        """Make an edit exactly as /edit does and return only its report: one JSON object with
        named fields (request, instructedit, baseline, rome; each editor's scores, the prompt as
        typed, rephrases, locality probes, blast radius and paper-protocol numbers)."""
        form = EditForm(task, instruction, custom_instruction, topic, sentiment, prompt, target,
                        rephrases, probes, subject, kind)
        return edit_payload(_run_edit(page, form, request))

    gr.api(edit_report, api_name="edit_report", concurrency_id=MODEL_QUEUE,
           concurrency_limit=limits.concurrency_limit)


def _wire_history(page: _Page, demo: gr.Blocks) -> None:
    """Undo, remove, reset, the history on page load, and export."""
    ui, service, history_outputs = page.ui, page.service, page.history_outputs

    @guarded
    def on_undo(request: gr.Request):
        service.undo(session_of(request))
        return _history_values(page, service.history(session_of(request)))

    @guarded
    def on_remove(edit_id: str | None, request: gr.Request):
        service.remove(session_of(request), edit_id or "")
        return _history_values(page, service.history(session_of(request)))

    @guarded
    def on_reset(request: gr.Request):
        service.reset(session_of(request))
        return _history_values(page, [])

    ui["undo_btn"].click(on_undo, None, history_outputs, api_name="undo")
    ui["remove_btn"].click(on_remove, ui["remove_choice"], history_outputs, api_name="remove")
    ui["reset_btn"].click(on_reset, None, history_outputs, api_name="reset")

    @guarded
    def on_history(request: gr.Request):
        return _history_values(page, service.history(session_of(request)))

    demo.load(on_history, None, history_outputs, api_name="history", show_progress="hidden")

    @guarded
    def on_export(request: gr.Request) -> str:
        return str(service.export_file(session_of(request)))

    ui["export_btn"].click(on_export, None, ui["export_file"], api_name="export")


def _wire_trace(page: _Page) -> None:
    """``/trace``: causal tracing of the prompt (runs the model)."""
    ui = page.ui

    @guarded
    def on_trace(prompt_: str | None, subject_: str | None, request: gr.Request) -> tuple[str, str]:
        view = page.service.trace(session_of(request), prompt_ or "", subject_ or "")
        return str(view.image), trace_markdown(view)

    ui["trace_btn"].click(on_trace, [ui["prompt"], ui["subject"]], [ui["trace_image"], ui["trace_text"]],
                          api_name="trace", concurrency_id=MODEL_QUEUE,
                          concurrency_limit=page.limits.concurrency_limit)


def _wire_import(page: _Page) -> None:
    """``/import``: a history file replaces the session's edits, recomputed (runs the model)."""
    limits = page.limits

    @guarded
    def on_import(path: str | None, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        if not path:
            raise UserError("Choose a history file (.json) to import.")
        size = os.path.getsize(path)
        if size > limits.max_import_bytes:
            raise UserError(f"The file is {size:,} bytes; the limit is {limits.max_import_bytes:,}.")
        with open(path, "rb") as handle:
            raw = handle.read()
        entries = page.service.import_history(session_of(request), raw,
                                              progress=lambda f, msg: progress(f, desc=msg))
        gr.Info(f"Imported {len(entries)} edit(s).")
        return _history_values(page, entries)

    import_btn = page.ui["import_btn"]
    import_btn.upload(on_import, import_btn, page.history_outputs, api_name="import",
                      concurrency_id=MODEL_QUEUE, concurrency_limit=limits.concurrency_limit)


def _wire_playground(page: _Page) -> None:
    """``/generate``: the Playground's continuation without and with the active edits."""
    ui, service = page.ui, page.service

    @guarded
    def on_generate(text: str, tokens: float, request: gr.Request):
        sid = session_of(request)
        without, with_edits = service.generate(sid, text, int(tokens))
        n = len(service.history(sid))
        off, on = word_diff(without, with_edits)
        note = (f"{n} active edit(s) applied on the right." if n else
                "You have no active edits yet, so both sides are the same model.")
        return off, on, note

    gr.on([ui["play_btn"].click, ui["play_prompt"].submit], on_generate, [ui["play_prompt"], ui["play_tokens"]],
          [ui["play_off"], ui["play_on"], ui["play_note"]], api_name="generate", concurrency_id=MODEL_QUEUE,
          concurrency_limit=page.limits.concurrency_limit)


def _editor_fields(key: str, title: str, report: EditReport | None, error: str | None,
                   fallback_input: str) -> dict:
    """The values of one editor's components (``key``: ``ie``, ``bl`` or ``rome``)."""
    before, after = word_diff(report.prompt.before, report.prompt.after) if report else ([], [])
    read_before, read_after = word_diff(report.wrapped.before, report.wrapped.after) if report else ([], [])
    return {
        f"{key}_before": before, f"{key}_after": after, f"{key}_summary": report_summary(report, error),
        f"{key}_rephrases": rephrase_table(report), f"{key}_locality": probe_table(report),
        f"{key}_input": report.model_input if report else fallback_input,
        f"{key}_read_before": read_before, f"{key}_read_after": read_after,
        f"{key}_paper": paper_summary(report), f"{key}_read_rephrases": wrapped_table(report),
        f"{key}_blast_summary": blast_markdown(report.blast if report else None, error),
        f"{key}_blast_chart": blast_chart(report.blast if report else None, f"{title}: blast radius"),
        f"{key}_blast": blast_table(report),
    }


def _edit_fields(outcome: EditOutcome) -> dict:
    """Every output of an edit but the history, by name (see :data:`EDIT_OUTPUTS`); a comparison
    editor still computing says so in its column."""
    prompt = outcome.entry.request.prompt
    fields = {"report": edit_payload(outcome), **_editor_fields("ie", "InstructEdit", outcome.report, None, prompt)}
    if outcome.report.partial:
        fields["ie_blast_summary"] = "⏳ InstructEdit: probing the blast radius…"
    for slot in SLOTS:
        info = SLOT_INFO[slot]
        fields.update(_editor_fields(info.key, info.label, *outcome.compared(slot), prompt))
        if slot in outcome.pending:
            fields[f"{info.key}_summary"] = fields[f"{info.key}_blast_summary"] = f"⏳ {info.label}: {info.computing}…"
    return fields


def _highlighted(label: str, elem_id: str) -> gr.HighlightedText:
    return gr.HighlightedText(label=label, color_map=DIFF_COLORS, show_legend=False,
                              show_inline_category=False, elem_id=elem_id)


def _result_column(title: str, key: str, out: dict) -> None:
    """The prompt as typed before/after (highlighted) and what a user sees, of one editor."""
    gr.Markdown(f"#### {title}")
    out[f"{key}_before"] = _highlighted("Before the edit", f"{key}-before")
    out[f"{key}_after"] = _highlighted("After the edit", f"{key}-after")
    out[f"{key}_summary"] = gr.Markdown(elem_id=f"{key}-summary")


def _read_column(title: str, key: str, out: dict, info: str) -> None:
    """What one editor read: its input (live preview), its continuation, the paper's numbers."""
    out[f"{key}_input"] = gr.Textbox(label=title, lines=3, interactive=False, info=info,
                                     elem_id=f"{key}-input")
    out[f"{key}_read_before"] = _highlighted("Continuation before the edit", f"{key}-read-before")
    out[f"{key}_read_after"] = _highlighted("Continuation after the edit", f"{key}-read-after")
    out[f"{key}_paper"] = gr.Markdown(elem_id=f"{key}-paper")
    out[f"{key}_read_rephrases"] = gr.Dataframe(
        wrapped_table(None), interactive=False, wrap=True, column_widths=WRAPPED_WIDTHS,
        label="Rephrases as the editor read them (generalization, paper protocol)",
        elem_id=f"{key}-read-rephrases")


def _tables(title: str, key: str, out: dict, open_: bool = True) -> None:
    """Rephrases and locality probes of one editor, as typed, with verdicts."""
    with gr.Accordion(f"{title}: rephrases and locality probes", open=open_):
        out[f"{key}_rephrases"] = gr.Dataframe(
            rephrase_table(None), interactive=False, wrap=True, column_widths=REPHRASE_WIDTHS,
            label="Rephrases (should now say the target)", elem_id=f"{key}-rephrases")
        out[f"{key}_locality"] = gr.Dataframe(
            probe_table(None), interactive=False, wrap=True, column_widths=PROBE_WIDTHS,
            label="Locality probes (should keep their answer)", elem_id=f"{key}-locality")


def _blast_panel(key: str, out: dict) -> None:
    """One editor's blast radius: the summary line, the chart and every probe."""
    out[f"{key}_blast_summary"] = gr.Markdown(elem_id=f"{key}-blast-summary")
    out[f"{key}_blast_chart"] = gr.Plot(label="p(target) on each probe, before and after the edit",
                                        show_label=False, format="png", elem_id=f"{key}-blast-chart")
    out[f"{key}_blast"] = gr.Dataframe(blast_table(None), interactive=False, wrap=True,
                                       column_widths=BLAST_WIDTHS, label="Blast radius probes",
                                       elem_id=f"{key}-blast")


def launch(demo: gr.Blocks, config: AppConfig, **kwargs) -> Any:
    """Queue (bounded) and launch with the app's theme and CSS; extra kwargs go to launch()."""
    # api_open=False: /gradio_api/run/<name> cannot skip the bounded queue (clients use the queue)
    demo.queue(max_size=config.limits.queue_size, default_concurrency_limit=config.limits.concurrency_limit,
               api_open=False)
    options = dict(server_name=config.host, server_port=config.port, share=config.share,
                   theme=gr.themes.Soft(), css=CSS, footer_links=["api"],
                   max_file_size=config.limits.max_import_bytes)
    options.update(kwargs)
    return demo.launch(**options)
