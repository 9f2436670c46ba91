"""The Gradio page. The only module of the package that imports Gradio.

:func:`build_demo` takes an :class:`~instructedit.ui.service.EditService` (which holds the shared
backbone and editors), so tests can pass tiny models; :func:`launch` applies the queue, theme and
CSS (Gradio 6 takes theme and css in ``launch()``).
"""
from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..data.examples import load_examples
from ..instructions import TASKS, get_task
from .config import AppConfig, Limits
from .diff import ADDED, REMOVED, word_diff
from .errors import UserError
from .forms import (
    LABELS,
    EditForm,
    build_request,
    default_instruction,
    instruction_options,
    preview_inputs,
    task_options,
)
from .pages import ABOUT, CITATION, INTRO, MISSING_RESULTS, TITLE, ResultsContent, diagram_html
from .service import EditService
from .views import (
    HISTORY_WIDTHS,
    PROBE_WIDTHS,
    REPHRASE_WIDTHS,
    history_choices,
    history_summary,
    history_table,
    probe_table,
    rephrase_table,
    report_summary,
)

log = logging.getLogger(__name__)

MODEL_QUEUE = "model"  # every event that runs the model shares this concurrency id
DIFF_COLORS = {REMOVED: "#fca5a5", ADDED: "#86efac"}
CSS = """
.ie-status { font-size: 0.9em; opacity: 0.9; }
.ie-diagram svg { width: 100%; height: auto; }
"""
CUSTOM_EXAMPLES = [
    ["The best pizza topping is", "pineapple", "My favourite pizza topping is",
     "The capital of France is\nWater boils at a temperature of", "", "positive"],
    ["The chemical symbol for gold is", "Gd", "Gold's chemical symbol is",
     "The chemical symbol for iron is\nThe Eiffel Tower is in", "", "positive"],
]


def guarded(fn: Callable) -> Callable:
    """Show :class:`UserError` as its sentence and any other failure as a generic one.

    A failing request never takes the app down and never shows a stack trace to the user.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except gr.Error:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # also e.g. a tokenizer's Rust panic, which is no Exception
            log.exception("request failed in %s", fn.__name__)
            raise gr.Error(f"Something went wrong on the server ({type(exc).__name__}); it was "
                           "logged. Your edits are unchanged.", print_exception=False) from None
    return wrapper


def session_of(request: gr.Request | None) -> str:
    sid = getattr(request, "session_hash", None)
    if not sid:
        raise UserError("This request has no session; reload the page.")
    return sid


def example_rows(task: str) -> list[list[Any]]:
    """Rows of the task's gr.Examples: prompt, target, rephrases, probes, topic, label.

    (The sentiment radio accepts only its choices, so rows without one get its default.)
    """
    if task == "custom":
        return CUSTOM_EXAMPLES
    return [[r.prompt, r.target_new, "\n".join(r.rephrases), "\n".join(p.prompt for p in r.locality),
             r.topic or "", r.label or "positive"] for r in load_examples(task)]


def _results_markdown(results: ResultsContent) -> str:
    if not results.markdown:
        return MISSING_RESULTS if not results.figures else ""
    # figures are shown below as images: drop markdown image lines whose paths would not resolve
    return re.sub(r"^\s*!\[[^\]]*\]\([^)]*\)\s*$", "", results.markdown, flags=re.MULTILINE)


def build_demo(service: EditService, status: str, results: ResultsContent | None = None) -> gr.Blocks:
    """The page: Edit (form, results, history), Playground, Results and About tabs."""
    limits: Limits = service.limits
    max_chars = limits.max_input_chars
    list_chars = max_chars * limits.max_lines + limits.max_lines
    has_baseline = service.baseline is not None
    first_task = "counterfact"
    results = results or ResultsContent(None)

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        gr.Markdown(status, elem_classes="ie-status", elem_id="status-line")

        with gr.Tab("Edit", id="edit"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=340):
                    task = gr.Radio(task_options(), value=first_task, label="Task",
                                    info="What kind of edit. ZsRE was held out of training: it tests "
                                         "whether the editor carries over to a new task.",
                                    elem_id="task")
                    task_help = gr.Markdown(get_task(first_task).description)
                    instruction = gr.Dropdown(instruction_options(first_task),
                                              value=default_instruction(first_task), label="Instruction",
                                              info="Tells the editor what kind of edit this is. 1-9 were "
                                                   "seen in training; 'held out' was not.",
                                              elem_id="instruction")
                    custom_instruction = gr.Textbox(label="Your instruction", visible=False,
                                                    max_length=max_chars, lines=2,
                                                    placeholder="e.g. Replace the answer with a new one.",
                                                    info="One sentence describing the edit.")
                    with gr.Row(visible=False) as convsent_row:
                        topic = gr.Textbox(label="Topic", max_length=max_chars,
                                           info="Fills [TOPIC] in the instruction.")
                        label = gr.Radio(list(LABELS), value="positive", label="Sentiment",
                                         info="Fills [LABEL]: the opinion to adopt.")
                    prompt = gr.Textbox(label="Prompt", max_length=max_chars, elem_id="prompt",
                                        info="The text whose continuation should change.")
                    target = gr.Textbox(label="Target", max_length=max_chars, elem_id="target",
                                        info="The new answer the model should give after the prompt.")
                    rephrases = gr.Textbox(label="Rephrases (optional, one per line)", lines=2,
                                           max_length=list_chars, elem_id="rephrases",
                                           info="Other ways to ask: should get the target too "
                                                "(generalization).")
                    probes = gr.Textbox(label="Locality probes (optional, one per line)", lines=2,
                                        max_length=list_chars, elem_id="probes",
                                        info="Unrelated prompts whose answers should not change "
                                             "(locality).")
                    edit_btn = gr.Button("Edit", variant="primary", elem_id="edit-button")
                    example_cols = {}
                    example_inputs = [prompt, target, rephrases, probes, topic, label]
                    for name, spec in TASKS.items():
                        with gr.Column(visible=name == first_task) as col:
                            visible_cols = [0, 1, 4, 5] if spec.needs_topic_and_label else [0, 1]
                            gr.Examples(example_rows(name), example_inputs, visible_columns=visible_cols,
                                        label=f"{spec.display_name} examples (click one to fill the form)",
                                        examples_per_page=6)
                        example_cols[name] = col

                with gr.Column(scale=3, min_width=420):
                    with gr.Row():
                        ie_input = gr.Textbox(label="InstructEdit's input", lines=3, interactive=False,
                                              elem_id="ie-input",
                                              info="Exactly what the model reads when the edit is made.")
                        bl_input = gr.Textbox(label="Baseline's input", lines=3, interactive=False,
                                              visible=has_baseline, info="The same prompt, no instruction.")
                    with gr.Row(equal_height=False):
                        ie_cols = _result_column("InstructEdit", "ie")
                        with gr.Column(visible=has_baseline) as bl_col:
                            bl_cols = _result_column("Baseline: multi-task MEND (no instruction)", "bl",
                                                     in_column=False)
                    ie_tables = _tables("InstructEdit", "ie")
                    with gr.Group(visible=has_baseline):
                        bl_tables = _tables("Baseline", "bl", open_=False)
                    with gr.Accordion("Full report (JSON)", open=False):
                        report_json = gr.JSON(label="Report")
            _ = bl_col

            gr.Markdown("### Your edits")
            history_md = gr.Markdown(history_summary([], limits.max_edits_per_session), elem_id="history-summary")
            history_df = gr.Dataframe(history_table([]), interactive=False, wrap=True, elem_id="history",
                                      label="Active edits (oldest first; scores: reliability / "
                                            "generalization / locality)", column_widths=HISTORY_WIDTHS)
            with gr.Row():
                undo_btn = gr.Button("Undo last edit", elem_id="undo-button")
                remove_dd = gr.Dropdown([], label="Edit to remove", scale=2, elem_id="remove-choice",
                                        info="Later edits stay; they were made on top of it.")
                remove_btn = gr.Button("Remove", elem_id="remove-button")
                reset_btn = gr.Button("Reset all", variant="stop", elem_id="reset-button")
            with gr.Row():
                export_btn = gr.Button("Export history (JSON)", elem_id="export-button")
                import_btn = gr.UploadButton("Import history (JSON)", file_types=[".json"], type="filepath",
                                             elem_id="import-button")
            export_file = gr.File(label="Exported history (click the name to download)", interactive=False,
                                  height=90, elem_id="export-file")
            gr.Markdown("Import replaces this session's edits with the file's, recomputed on this model "
                        "(the file must come from the same model).")

        with gr.Tab("Playground", id="playground"):
            gr.Markdown("Type any prompt and compare the model without and with your active edits.")
            with gr.Row():
                play_prompt = gr.Textbox(label="Prompt", max_length=max_chars, scale=4, elem_id="play-prompt",
                                         info="Any text; the model continues it greedily.")
                play_tokens = gr.Slider(1, limits.max_new_tokens, value=limits.max_new_tokens, step=1,
                                        label="New tokens", info="How much text to generate.", scale=1)
            play_btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Row():
                play_off = gr.HighlightedText(label="Without your edits", color_map=DIFF_COLORS,
                                              show_inline_category=False, elem_id="play-off")
                play_on = gr.HighlightedText(label="With your edits", color_map=DIFF_COLORS,
                                             show_inline_category=False, elem_id="play-on")
            play_note = gr.Markdown()

        with gr.Tab("Results", id="results"):
            gr.Markdown(_results_markdown(results))
            for figure in results.figures:
                gr.Image(str(figure), label=figure.stem.replace("_", " "), interactive=False)

        with gr.Tab("About", id="about"):
            gr.HTML(diagram_html())
            gr.Markdown(ABOUT)
            gr.Code(CITATION, language=None, label="BibTeX", interactive=False)

        # ----- events ---------------------------------------------------------------------
        form_inputs = [task, instruction, custom_instruction, topic, label, prompt, target, rephrases, probes]
        history_outputs = [history_df, history_md, remove_dd]

        def make_form(*values) -> EditForm:
            return EditForm(*[v if v is not None else "" for v in values])

        def history_values(entries) -> tuple:
            choices = history_choices(entries)
            return (history_table(entries), history_summary(entries, limits.max_edits_per_session),
                    gr.Dropdown(choices=choices, value=choices[-1][1] if choices else None))

        def on_task(name: str):
            spec = get_task(name)
            return (gr.Dropdown(choices=instruction_options(name), value=default_instruction(name)),
                    spec.description, gr.Row(visible=spec.needs_topic_and_label),
                    *[gr.Column(visible=n == name) for n in example_cols])

        task.change(on_task, task, [instruction, task_help, convsent_row, *example_cols.values()],
                    queue=False, show_progress="hidden", api_visibility="private")
        instruction.change(lambda c: gr.Textbox(visible=c == "custom"), instruction, custom_instruction,
                           queue=False, show_progress="hidden", api_visibility="private")

        def on_preview(task_, instruction_, custom_, topic_, label_, prompt_, target_, rephrases_, probes_):
            form = make_form(task_, instruction_, custom_, topic_, label_, prompt_, target_, rephrases_, probes_)
            return preview_inputs(form, max_chars, limits.max_lines)

        gr.on([c.change for c in form_inputs[:6]], on_preview, form_inputs, [ie_input, bl_input],
              queue=False, show_progress="hidden", api_visibility="private", trigger_mode="always_last")

        @guarded
        def on_edit(task_, instruction_, custom_, topic_, label_, prompt_, target_, rephrases_, probes_,
                    request: gr.Request, progress=gr.Progress()):  # noqa: B008
            form = make_form(task_, instruction_, custom_, topic_, label_, prompt_, target_, rephrases_, probes_)
            req = build_request(form, max_chars, limits.max_lines)
            outcome = service.edit(session_of(request), req,
                                   progress=lambda f, msg: progress(f, desc=msg))
            if outcome.baseline_error:
                gr.Warning(outcome.baseline_error)
            ie, bl = outcome.report, outcome.baseline_report
            ie_diff = word_diff(ie.before, ie.after)
            bl_diff = word_diff(bl.before, bl.after) if bl else ([], [])
            payload = {"instructedit": ie.to_dict(), "baseline": bl.to_dict() if bl else None,
                       "edit_id": outcome.entry.id, "total_ms": round(outcome.total_ms, 1)}
            return (ie.model_input, bl.model_input if bl else req.prompt,
                    ie_diff[0], ie_diff[1], report_summary(ie),
                    bl_diff[0], bl_diff[1], report_summary(bl, outcome.baseline_error),
                    rephrase_table(ie), probe_table(ie), rephrase_table(bl), probe_table(bl),
                    payload, *history_values(outcome.history))

        edit_outputs = [ie_input, bl_input, *ie_cols, *bl_cols, *ie_tables, *bl_tables, report_json,
                        *history_outputs]
        gr.on([edit_btn.click, target.submit], on_edit, form_inputs, edit_outputs, api_name="edit",
              concurrency_id=MODEL_QUEUE, concurrency_limit=limits.concurrency_limit,
              scroll_to_output=False)

        @guarded
        def on_undo(request: gr.Request):
            service.undo(session_of(request))
            return history_values(service.history(session_of(request)))

        @guarded
        def on_remove(edit_id: str | None, request: gr.Request):
            service.remove(session_of(request), edit_id or "")
            return history_values(service.history(session_of(request)))

        @guarded
        def on_reset(request: gr.Request):
            service.reset(session_of(request))
            return history_values([])

        undo_btn.click(on_undo, None, history_outputs, api_name="undo")
        remove_btn.click(on_remove, remove_dd, history_outputs, api_name="remove")
        reset_btn.click(on_reset, None, history_outputs, api_name="reset")

        @guarded
        def on_history(request: gr.Request):
            return history_values(service.history(session_of(request)))

        demo.load(on_history, None, history_outputs, api_name="history", show_progress="hidden")

        @guarded
        def on_export(request: gr.Request) -> str:
            return str(service.export_file(session_of(request)))

        export_btn.click(on_export, None, export_file, api_name="export")

        @guarded
        def on_import(path: str | None, request: gr.Request, progress=gr.Progress()):  # noqa: B008
            if not path:
                raise UserError("Choose a history file (.json) to import.")
            size = os.path.getsize(path)
            if size > limits.max_import_bytes:
                raise UserError(f"The file is {size:,} bytes; the limit is {limits.max_import_bytes:,}.")
            with open(path, "rb") as handle:
                raw = handle.read()
            entries = service.import_history(session_of(request), raw,
                                             progress=lambda f, msg: progress(f, desc=msg))
            gr.Info(f"Imported {len(entries)} edit(s).")
            return history_values(entries)

        import_btn.upload(on_import, import_btn, history_outputs, api_name="import",
                          concurrency_id=MODEL_QUEUE, concurrency_limit=limits.concurrency_limit)

        @guarded
        def on_generate(text: str, tokens: float, request: gr.Request):
            sid = session_of(request)
            without, with_edits = service.generate(sid, text, int(tokens))
            n = len(service.history(sid))
            off, on = word_diff(without, with_edits)
            note = (f"{n} active edit(s) applied on the right." if n else
                    "You have no active edits yet, so both sides are the same model.")
            return off, on, note

        gr.on([play_btn.click, play_prompt.submit], on_generate, [play_prompt, play_tokens],
              [play_off, play_on, play_note], api_name="generate", concurrency_id=MODEL_QUEUE,
              concurrency_limit=limits.concurrency_limit)

        def on_unload(request: gr.Request):
            sid = getattr(request, "session_hash", None)
            if sid:
                service.close(sid)

        demo.unload(on_unload)
    return demo


def _result_column(title: str, key: str, in_column: bool = True) -> list[gr.components.Component]:
    """Before/after (highlighted) and the one-line scores of one editor."""
    def body():
        gr.Markdown(f"#### {title}")
        before = gr.HighlightedText(label="Before the edit", color_map=DIFF_COLORS, show_legend=False,
                                    show_inline_category=False, elem_id=f"{key}-before")
        after = gr.HighlightedText(label="After the edit", color_map=DIFF_COLORS, show_legend=False,
                                   show_inline_category=False, elem_id=f"{key}-after")
        summary = gr.Markdown(elem_id=f"{key}-summary")
        return [before, after, summary]

    if in_column:
        with gr.Column():
            return body()
    return body()


def _tables(title: str, key: str, open_: bool = True) -> list[gr.components.Component]:
    """Rephrases (generalization) and locality probes tables of one editor."""
    with gr.Accordion(f"{title}: rephrases and locality probes", open=open_):
        reph = gr.Dataframe(rephrase_table(None), interactive=False, wrap=True, label="Rephrases (generalization)",
                            column_widths=REPHRASE_WIDTHS, elem_id=f"{key}-rephrases")
        loc = gr.Dataframe(probe_table(None), interactive=False, wrap=True, label="Locality probes",
                           column_widths=PROBE_WIDTHS, elem_id=f"{key}-locality")
    return [reph, loc]


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
