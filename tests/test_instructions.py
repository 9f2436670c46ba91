"""Tests for the task registry and instruction wrapping."""

from __future__ import annotations

import pytest

from instructedit.errors import UserFacingError
from instructedit.instructions import (
    HELD_OUT,
    HELD_OUT_INDEX,
    MAX_CUSTOM_INSTRUCTION_CHARS,
    SEEN_INSTRUCTION_INDICES,
    TASKS,
    InstructionError,
    TaskSpec,
    build_edit_input,
    fill_placeholders,
    get_task,
    is_custom_instruction,
    parse_instruction_choice,
    resolve_instruction,
    wrap_prompt,
)

FIXED = ("counterfact", "recent", "convsent", "zsre")


def test_registry_contents() -> None:
    assert set(TASKS) == {*FIXED, "custom"}
    assert SEEN_INSTRUCTION_INDICES == tuple(range(9))
    assert HELD_OUT_INDEX == 9
    assert HELD_OUT_INDEX not in SEEN_INSTRUCTION_INDICES
    assert [n for n, s in TASKS.items() if s.held_out_of_training] == ["zsre"]
    assert [n for n, s in TASKS.items() if s.needs_topic_and_label] == ["convsent"]
    for name, spec in TASKS.items():
        assert isinstance(spec, TaskSpec) and spec.name == name
        assert spec.display_name and spec.description and "\n" not in spec.description


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        TASKS["extra"] = TASKS["custom"]  # type: ignore[index]


@pytest.mark.parametrize("name", FIXED)
def test_ten_distinct_single_line_instructions(name: str) -> None:
    instructions = TASKS[name].instructions
    assert isinstance(instructions, tuple) and len(instructions) == 10
    assert len(set(instructions)) == 10
    for text in instructions:
        assert text == text.strip() and "\n" not in text and text.endswith(".")


def test_custom_has_no_instructions() -> None:
    assert TASKS["custom"].instructions == ()


def test_placeholders_only_in_convsent() -> None:
    for text in TASKS["convsent"].instructions:
        assert "[LABEL]" in text and "[TOPIC]" in text
    for name in ("counterfact", "recent", "zsre"):
        for text in TASKS[name].instructions:
            assert "[" not in text and "]" not in text


def test_wrap_format_exact() -> None:
    assert wrap_prompt("counterfact", "The capital of France is", "Do it.") == (
        "Task: counterfact\nDescription: Do it.\nInput: The capital of France is"
    )


def test_build_edit_input_uses_registry_name_and_instruction() -> None:
    out = build_edit_input("zsre", "Who founded Acme?", 3)
    assert (
        out
        == f"Task: zsre\nDescription: {TASKS['zsre'].instructions[3]}\nInput: Who founded Acme?"
    )


@pytest.mark.parametrize("choice", [None, "none", " None "])
def test_no_instruction_leaves_prompt_unchanged(choice: str | None) -> None:
    assert resolve_instruction("recent", choice) is None
    assert build_edit_input("recent", "The CEO of X is", choice) == "The CEO of X is"
    assert wrap_prompt("recent", "The CEO of X is", None) == "The CEO of X is"


def test_heldout_and_indices() -> None:
    held = TASKS["counterfact"].instructions[HELD_OUT_INDEX]
    assert resolve_instruction("counterfact", "heldout") == held
    assert resolve_instruction("counterfact", 9) == held
    assert resolve_instruction("counterfact", "9") == held
    assert resolve_instruction("counterfact", 0) == TASKS["counterfact"].instructions[0]


@pytest.mark.parametrize("choice", [10, -1, "10", "-1", 99])
def test_index_out_of_range(choice: int | str) -> None:
    with pytest.raises(InstructionError, match="out of range"):
        resolve_instruction("recent", choice)


def test_convsent_placeholders_filled_at_test_time() -> None:
    text = resolve_instruction(
        "convsent", "heldout", topic="pineapple pizza", label="negative"
    )
    assert text is not None
    assert "[TOPIC]" not in text and "[LABEL]" not in text
    assert "pineapple pizza" in text and "negative" in text
    out = build_edit_input(
        "convsent",
        "What do you think of pineapple pizza?",
        2,
        topic="pineapple pizza",
        label="Positive",
    )
    assert out.startswith("Task: convsent\nDescription: ")
    assert "pineapple pizza" in out and "positive" in out and "[" not in out


@pytest.mark.parametrize(
    "kwargs, missing",
    [
        ({"label": "positive"}, r"\[TOPIC\]"),
        ({"topic": "cats"}, r"\[LABEL\]"),
        ({}, r"\[TOPIC\]"),
    ],
)
def test_convsent_missing_topic_or_label(kwargs: dict[str, str], missing: str) -> None:
    with pytest.raises(InstructionError, match=missing):
        resolve_instruction("convsent", 0, **kwargs)


def test_bad_label() -> None:
    with pytest.raises(InstructionError, match="positive, negative"):
        fill_placeholders("[LABEL] about [TOPIC]", topic="cats", label="neutral")


def test_fill_placeholders_single_pass() -> None:
    assert (
        fill_placeholders("[TOPIC] is [LABEL]", topic="[LABEL]", label="negative")
        == "[LABEL] is negative"
    )
    assert fill_placeholders("no placeholders here") == "no placeholders here"


def test_unknown_placeholder() -> None:
    with pytest.raises(
        InstructionError, match=r"\[FOO\].*allowed.*\[TOPIC\].*\[LABEL\]"
    ):
        fill_placeholders("Edit [FOO] now.")
    with pytest.raises(InstructionError, match=r"\[FOO\]"):
        resolve_instruction("custom", "Make [FOO] happen.")


def test_custom_text() -> None:
    assert (
        resolve_instruction("custom", "  Teach the\n new fact.  ")
        == "Teach the new fact."
    )
    assert (
        resolve_instruction(
            "convsent", "Be [LABEL] on [TOPIC].", topic="tea", label="positive"
        )
        == "Be positive on tea."
    )
    assert (
        len(resolve_instruction("custom", "x" * MAX_CUSTOM_INSTRUCTION_CHARS) or "")
        == 500
    )


@pytest.mark.parametrize("choice", ["", "   ", "\n"])
def test_empty_custom_text(choice: str) -> None:
    with pytest.raises(InstructionError, match="empty"):
        resolve_instruction("custom", choice)


def test_custom_text_too_long() -> None:
    with pytest.raises(InstructionError, match="limit"):
        resolve_instruction("custom", "x" * (MAX_CUSTOM_INSTRUCTION_CHARS + 1))


def test_custom_task_has_no_indexed_instructions() -> None:
    for choice in (0, "heldout"):
        with pytest.raises(InstructionError, match="no fixed instructions"):
            resolve_instruction("custom", choice)


def test_unknown_task() -> None:
    with pytest.raises(
        InstructionError,
        match="known tasks: counterfact, recent, convsent, zsre, custom",
    ):
        get_task("mquake")
    with pytest.raises(InstructionError, match="Unknown task"):
        build_edit_input("mquake", "p", None)


def test_wrap_rejects_unfilled_or_bad_instruction() -> None:
    with pytest.raises(InstructionError, match="placeholder"):
        wrap_prompt("convsent", "p", TASKS["convsent"].instructions[0])
    with pytest.raises(InstructionError, match="single line"):
        wrap_prompt("custom", "p", "two\nlines")
    with pytest.raises(InstructionError, match="empty"):
        wrap_prompt("custom", "p", "  ")


def test_bool_choice_rejected() -> None:
    with pytest.raises(InstructionError):
        resolve_instruction("recent", True)  # type: ignore[arg-type]


# ----- one rendering, one parser ------------------------------------------------------------------
RENDERED = [
    # (task, prompt, choice, topic, label, expected edit input)
    ("counterfact", "  The capital of France is ", 0, None, None,
     "Task: counterfact\nDescription: Replace a true fact about the subject with a counterfactual "
     "object.\nInput: The capital of France is"),
    ("recent", "The CEO of X is", "heldout", None, None,
     "Task: recent\nDescription: Absorb a brand-new fact and answer with its latest object.\n"
     "Input: The CEO of X is"),
    ("recent", "The CEO of X is", " Held-Out ", None, None,
     "Task: recent\nDescription: Absorb a brand-new fact and answer with its latest object.\n"
     "Input: The CEO of X is"),
    ("convsent", "What do you think of tea?", "3", " tea ", "Negative",
     "Task: convsent\nDescription: Respond with negative sentiment whenever tea comes up.\n"
     "Input: What do you think of tea?"),
    ("convsent", "What do you think of tea?", "Be [LABEL] about [TOPIC].", "tea", "positive",
     "Task: convsent\nDescription: Be positive about tea.\nInput: What do you think of tea?"),
    ("zsre", "Who founded Acme?", 3, None, None,
     "Task: zsre\nDescription: Reply to this factual question about the subject with a short "
     "answer.\nInput: Who founded Acme?"),
    ("custom", "Rome is in", "  Teach the\n new   fact. ", None, None,
     "Task: custom\nDescription: Teach the new fact.\nInput: Rome is in"),
    ("counterfact", "Rome is in", "abc", None, None, "Task: counterfact\nDescription: abc\nInput: Rome is in"),
    ("counterfact", "  Rome is in ", None, None, None, "Rome is in"),
    ("custom", "  Rome is in ", "none", None, None, "Rome is in"),
    ("convsent", " What about tea? ", " None ", "tea", "positive", "What about tea?"),
]


@pytest.mark.parametrize("task, prompt, choice, topic, label, expected", RENDERED)
def test_one_rendering_gives_the_exact_strings(task, prompt, choice, topic, label, expected) -> None:
    assert build_edit_input(task, prompt, choice, topic=topic, label=label) == expected


@pytest.mark.parametrize("task, prompt, choice, topic, label, expected", RENDERED)
def test_every_caller_renders_through_the_one_function(task, prompt, choice, topic, label, expected) -> None:
    import random

    from instructedit.data.records import EditRecord, LocalityProbe
    from instructedit.editing.editor import EditRequest
    from instructedit.evaluate.inputs import render
    from instructedit.train.examples import render_example

    request = EditRequest(prompt=prompt, target="x", task=task, instruction=choice, topic=topic, label=label)
    assert request.edit_input() == expected
    assert request.wrap(prompt) == expected
    assert request.edit_input(False) == request.wrap(prompt, False) == prompt.strip()
    record = EditRecord(id="r", task=task, prompt=prompt, target_new="x", rephrases=(prompt,),
                        locality=(LocalityProbe("p", "a"),), topic=topic,
                        label=label.lower() if label else None)
    for item in (render(record, parse_instruction_choice(choice)), render(record, choice)):
        assert item.edit_input == expected and item.rephrases == (expected,)
    assert render(record, choice, use_instructions=False).edit_input == prompt.strip()
    example = render_example(record, choice, random.Random(0))  # type: ignore[arg-type]
    assert example.edit_prompt == example.outer_prompt == expected


@pytest.mark.parametrize("task, prompt", [("nope", "p"), ("counterfact", "  "), ("custom", "")])
@pytest.mark.parametrize("choice", [None, "none", "Do it."])
def test_rendering_checks_task_and_prompt_for_every_choice(task, prompt, choice) -> None:
    with pytest.raises(InstructionError, match="Unknown task" if task == "nope" else "prompt"):
        build_edit_input(task, prompt, choice)


@pytest.mark.parametrize("text, parsed", [
    (None, None), ("none", None), (" NoNe ", None),
    (3, 3), ("3", 3), (" +3 ", 3), ("-1", -1), ("12", 12),
    ("heldout", HELD_OUT), ("Held-Out", HELD_OUT), (" held_out ", HELD_OUT),
    ("abc", "abc"), ("  Teach the\n new   fact. ", "Teach the new fact."), ("seen", "seen"),
    ("+-3", "+-3"), ("held out", "held out"), ("x" * MAX_CUSTOM_INSTRUCTION_CHARS, "x" * MAX_CUSTOM_INSTRUCTION_CHARS),
])
def test_parse_instruction_choice(text, parsed) -> None:
    assert parse_instruction_choice(text) == parsed
    assert parse_instruction_choice(parsed) == parsed  # a parsed choice parses to itself
    assert is_custom_instruction(parsed) == (isinstance(parsed, str) and parsed != HELD_OUT)


@pytest.mark.parametrize("text, task, match", [
    ("", None, "Custom instruction text is empty"),
    ("  \n ", "counterfact", "Custom instruction text is empty"),
    ("x" * (MAX_CUSTOM_INSTRUCTION_CHARS + 1), None, "501 characters; the limit is 500"),
    (True, None, "must be None, an index or text, got bool"),
    (1.0, None, "must be None, an index or text, got float"),
    ("10", "counterfact", r"index 10 is out of range for task 'counterfact' \(0-9\)"),
    (-1, "zsre", "index -1 is out of range"),
    ("3", "custom", "Task 'custom' has no fixed instructions"),
    ("heldout", "custom", "Task 'custom' has no fixed instructions"),
    ("none", "mquake", "Unknown task 'mquake'"),
])
def test_parse_instruction_choice_errors(text, task, match) -> None:
    with pytest.raises(InstructionError, match=match) as err:
        parse_instruction_choice(text, task)
    assert isinstance(err.value, UserFacingError) and isinstance(err.value, ValueError)


def test_parse_instruction_choice_with_a_task() -> None:
    assert parse_instruction_choice("9", "zsre") == 9
    assert parse_instruction_choice("heldout", "counterfact") == HELD_OUT
    assert parse_instruction_choice("Do it.", "counterfact") == "Do it."  # custom text suits every task
    assert parse_instruction_choice("Do it.", "custom") == "Do it."
    assert parse_instruction_choice("none", "custom") is None


def test_callers_read_choices_with_the_one_parser() -> None:
    from instructedit.cli.common import instruction_choice as cli_choice
    from instructedit.evaluate.inputs import SEEN, describe_instruction, parse_instruction
    from instructedit.web.errors import UserError
    from instructedit.web.forms import EditForm
    from instructedit.web.forms import instruction_choice as form_choice

    assert cli_choice("counterfact", None) == 0 and cli_choice("custom", None) is None
    assert [cli_choice("recent", t) for t in ("none", "+4", "Held-Out", " Do  it. ")] == [None, 4, HELD_OUT, "Do it."]
    with pytest.raises(InstructionError, match="out of range"):
        cli_choice("counterfact", "12")
    assert [parse_instruction(t) for t in (None, " Seen ", "none", "3", "held_out", "Do it.")] == [
        SEEN, SEEN, None, 3, HELD_OUT, "Do it."]
    assert [describe_instruction(c) for c in (SEEN, None, 3, HELD_OUT, "Do it.")] == [
        "seen (seeded 0-8)", "none", "3", "heldout (9)", "custom text"]
    assert [form_choice(EditForm("zsre", c), 500) for c in ("none", "heldout", "0", "9")] == [None, HELD_OUT, 0, 9]
    assert form_choice(EditForm("custom", "custom", custom_instruction=" Do \n it. "), 500) == "Do it."
    for bad, match in ((EditForm("zsre", "10"), "Pick an instruction for the ZsRE task"),
                       (EditForm("zsre", "Do it."), "Pick an instruction"),
                       (EditForm("custom", "0"), "Pick an instruction for the Custom task"),
                       (EditForm("custom", "heldout"), "The Custom task has no held-out instruction"),
                       (EditForm("custom", "custom", custom_instruction="Held-Out"), "as a sentence")):
        with pytest.raises(UserError, match=match):
            form_choice(bad, 500)
