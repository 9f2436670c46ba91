"""Tests for the task registry and instruction wrapping."""

from __future__ import annotations

import pytest

from instructedit.instructions import (
    HELD_OUT_INDEX,
    MAX_CUSTOM_INSTRUCTION_CHARS,
    SEEN_INSTRUCTION_INDICES,
    TASKS,
    InstructionError,
    TaskSpec,
    build_edit_input,
    fill_placeholders,
    get_task,
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
