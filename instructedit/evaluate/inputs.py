"""Which instruction each record gets, and the texts an evaluation scores.

The edit input, its rephrases and its portability questions are wrapped with the record's
instruction (portability questions follow from the edit, so they are scored like rephrases);
locality prompts are never wrapped. An editor without instructions sees every text unwrapped.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..data.records import EditRecord
from ..instructions import (
    HELD_OUT,
    HELD_OUT_INDEX,
    NO_INSTRUCTION,
    SEEN_INSTRUCTION_INDICES,
    build_edit_input,
    get_task,
    is_custom_instruction,
    parse_instruction_choice,
)

SEEN = "seen"
InstructionChoice = int | str | None
"""``"seen"`` (a seeded choice among the training instructions), an index, ``"heldout"``,
custom text, or ``None`` (no instruction)."""


def parse_instruction(value: str | None) -> InstructionChoice:
    """The choice of ``--instruction``: ``seen`` (default), ``N``, ``heldout``, ``none`` or text
    (read by :func:`~instructedit.instructions.parse_instruction_choice`)."""
    if value is None or value.strip().lower() == SEEN:
        return SEEN
    return parse_instruction_choice(value)


def instruction_for(record: EditRecord, choice: InstructionChoice, seed: int = 0) -> int | str | None:
    """The concrete instruction of ``record`` (tasks without fixed instructions get none
    unless ``choice`` is custom text)."""
    has_fixed = bool(get_task(record.task).instructions)
    if choice == SEEN:
        if not has_fixed:
            return None
        return random.Random(f"eval-instruction:{seed}:{record.task}:{record.id}").choice(
            SEEN_INSTRUCTION_INDICES)
    parsed = parse_instruction_choice(choice)
    if parsed is None or is_custom_instruction(parsed):
        return parsed
    if not has_fixed:
        return None
    return HELD_OUT_INDEX if parsed == HELD_OUT else parsed


def describe_instruction(choice: InstructionChoice) -> str:
    """A short label of an instruction choice for tables and JSON."""
    if choice == SEEN:
        return "seen (seeded 0-8)"
    if is_custom_instruction(choice):
        return "custom text"
    parsed = parse_instruction_choice(choice)
    if parsed == HELD_OUT:
        return f"heldout ({HELD_OUT_INDEX})"
    return NO_INSTRUCTION if parsed is None else str(parsed)


@dataclass(frozen=True)
class RenderedRecord:
    """A record's texts as scored: ``(prompt, answer)`` pairs per kind."""

    record: EditRecord
    instruction: int | str | None
    edit_input: str
    rephrases: tuple[str, ...]
    portability: tuple[tuple[str, str], ...]
    locality: tuple[tuple[str, str], ...]


def render(record: EditRecord, choice: InstructionChoice, use_instructions: bool = True,
           seed: int = 0, max_probes: int = 4) -> RenderedRecord:
    """Render ``record`` with its instruction (at most ``max_probes`` of each probe kind)."""
    instruction = instruction_for(record, choice, seed) if use_instructions else None

    def wrap(prompt: str) -> str:
        return build_edit_input(record.task, prompt, instruction, topic=record.topic, label=record.label)

    return RenderedRecord(
        record=record, instruction=instruction, edit_input=wrap(record.prompt),
        rephrases=tuple(wrap(r) for r in record.rephrases[:max_probes]),
        portability=tuple((wrap(p.prompt), p.answer) for p in record.portability[:max_probes]),
        locality=tuple((p.prompt.strip(), p.answer) for p in record.locality[:max_probes]),
    )
