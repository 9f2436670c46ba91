"""From the edit form's raw values to an :class:`~instructedit.editing.editor.EditRequest` (no Gradio).

The instruction picker's values are strings: ``"0"``..``"8"`` (seen instructions),
``"heldout"`` (the unseen one), ``"none"`` (no instruction) and ``"custom"`` (free text).
The subject box (what the edit is about) is filled with a guess when left empty; the kind of
subject (for the blast radius) is ``"auto"`` (guessed) or one of the catalog's kinds.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from ..editing.editor import EditRequest
from ..instructions import (
    HELD_OUT,
    HELD_OUT_INDEX,
    NO_INSTRUCTION,
    SEEN_INSTRUCTION_INDICES,
    SENTIMENT_LABELS,
    TASKS,
    InstructionError,
    get_task,
    is_custom_instruction,
    parse_instruction_choice,
)
from .blast import AUTO_KIND
from .errors import UserError
from .subjects import Catalog, default_catalog, guess_subject

CUSTOM_INSTRUCTION = "custom"
LABELS = SENTIMENT_LABELS


def task_options() -> list[tuple[str, str]]:
    """(label, value) pairs of the task picker."""
    options = []
    for name, spec in TASKS.items():
        label = spec.display_name + (" (held out in training)" if spec.held_out_of_training else "")
        options.append((label, name))
    return options


def instruction_options(task: str) -> list[tuple[str, str]]:
    """(label, value) pairs of the instruction picker for ``task``."""
    spec = get_task(task)
    options = [(f"{i + 1}. {spec.instructions[i]}", str(i))
               for i in SEEN_INSTRUCTION_INDICES if i < len(spec.instructions)]
    if len(spec.instructions) > HELD_OUT_INDEX:
        options.append((f"Held out: {spec.instructions[HELD_OUT_INDEX]}", HELD_OUT))
    options.append(("No instruction", NO_INSTRUCTION))
    options.append(("Write my own instruction", CUSTOM_INSTRUCTION))
    return options


def default_instruction(task: str) -> str:
    """The picker's default: the first seen instruction, or none for the custom task."""
    return "0" if get_task(task).instructions else NO_INSTRUCTION


def split_lines(text: str | None) -> tuple[str, ...]:
    """Non-empty stripped lines of a multi-line box."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


@dataclass(frozen=True)
class EditForm:
    """The edit form exactly as typed (strings; lists are one item per line)."""

    task: str
    instruction: str
    custom_instruction: str = ""
    topic: str = ""
    label: str = ""
    prompt: str = ""
    target: str = ""
    rephrases: str = ""
    probes: str = ""
    subject: str = ""
    kind: str = AUTO_KIND


def kind_options(catalog: Catalog | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs of the kind-of-subject picker: a guess, then every kind."""
    catalog = catalog or default_catalog()
    return [("guess from the subject", AUTO_KIND)] + [(k.label, k.name) for k in catalog.kinds]


def kind_choice(form: EditForm, catalog: Catalog | None = None) -> str | None:
    """The form's kind of subject, or None to guess it."""
    catalog = catalog or default_catalog()
    kind = (form.kind or "").strip()
    if not kind or kind == AUTO_KIND:
        return None
    if kind not in catalog.names:
        raise UserError(f"Unknown kind of subject {kind!r}; pick one of: {', '.join(catalog.names)}.")
    return kind


def subject_for(prompt: str, current: str | None) -> str:
    """The subject box's value for ``prompt``: the current one while the prompt contains it,
    else a guess (so an example's subject stays, and a new prompt gets a new guess)."""
    current = (current or "").strip()
    if current and current in (prompt or ""):
        return current
    return guess_subject(prompt or "")


def _check_text(name: str, value: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise UserError(f"The {name} is {len(value)} characters long; the limit is {max_chars}.")


def instruction_choice(form: EditForm, max_chars: int) -> int | str | None:
    """The ``EditRequest.instruction`` value chosen by the form."""
    choice = (form.instruction or "").strip()
    spec = get_task(form.task)
    if choice == CUSTOM_INSTRUCTION:
        text = " ".join((form.custom_instruction or "").split())
        if not text:
            raise UserError("Write your instruction in the box, or pick another instruction.")
        _check_text("instruction", text, max_chars)
        if not is_custom_instruction(text):
            raise UserError("Write the instruction as a sentence; to use a listed one, pick it instead.")
        return text
    if choice == HELD_OUT and not spec.instructions:
        raise UserError(f"The {spec.display_name} task has no held-out instruction.")
    if choice in (NO_INSTRUCTION, HELD_OUT) or (choice.isascii() and choice.isdigit()):
        with contextlib.suppress(InstructionError):  # an index the task does not have
            return parse_instruction_choice(choice, form.task)
    raise UserError(f"Pick an instruction for the {spec.display_name} task.")


def build_request(form: EditForm, max_chars: int, max_lines: int) -> EditRequest:
    """Validate the form (lengths, counts, ConvSent fields) and build the request."""
    if form.task not in TASKS:
        raise UserError(f"Pick a task ({', '.join(s.display_name for s in TASKS.values())}).")
    prompt, target = (form.prompt or "").strip(), (form.target or "").strip()
    if not prompt:
        raise UserError("The prompt is empty: type the text whose answer should change.")
    if not target:
        raise UserError("The target is empty: type the new answer.")
    _check_text("prompt", prompt, max_chars)
    _check_text("target", target, max_chars)
    lists = {}
    for name, text in (("rephrase", form.rephrases), ("locality probe", form.probes)):
        lines = split_lines(text)
        if len(lines) > max_lines:
            raise UserError(f"There are {len(lines)} {name}s; the limit is {max_lines} (one per line).")
        for i, line in enumerate(lines, 1):
            _check_text(f"{name} on line {i}", line, max_chars)
        lists[name] = lines
    subject = " ".join((form.subject or "").split())
    _check_text("subject", subject, max_chars)
    topic = label = None
    if get_task(form.task).needs_topic_and_label:
        topic = (form.topic or "").strip()
        label = (form.label or "").strip().lower()
        if not topic:
            raise UserError("ConvSent needs a topic (for example: Jules Verne).")
        _check_text("topic", topic, max_chars)
        if label not in LABELS:
            raise UserError("ConvSent needs a sentiment: positive or negative.")
    return EditRequest(prompt=prompt, target=target, task=form.task,
                       instruction=instruction_choice(form, max_chars), topic=topic, label=label,
                       rephrases=lists["rephrase"], probes=lists["locality probe"],
                       subject=subject or topic or guess_subject(prompt) or None)


def preview_inputs(form: EditForm, max_chars: int, max_lines: int) -> tuple[str, str]:
    """What the InstructEdit editor and the baseline see, or a hint when the form is incomplete."""
    if not (form.prompt or "").strip():
        hint = "(type a prompt to see the input the model gets)"
        return hint, hint
    try:
        request = build_request(dataclasses.replace(form, target=form.target or "?"), max_chars, max_lines)
        return request.edit_input(True), request.edit_input(False)
    except (UserError, InstructionError) as exc:
        hint = f"(not ready: {exc})"
        return hint, hint
