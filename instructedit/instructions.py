"""Task registry and instruction wrapping for InstructEdit (arXiv 2402.16123).

An edit prompt is wrapped with a task instruction before it reaches the editor::

    Task: {task}
    Description: {instruction}
    Input: {prompt}

(joined by single newlines; other code appends the target as ``" " + target``). ``{task}``
is the registry name (``counterfact``, ``recent``, ``convsent``, ``zsre`` or ``custom``).
With no instruction (``None``) the prompt is only stripped: that is the baseline
editor's input. :func:`build_edit_input` is the one rendering of an edit input and
:func:`parse_instruction_choice` the one reading of an instruction choice as typed
(``none``, ``heldout``, an index or custom text).

Each fixed task has ten instructions. Indices ``SEEN_INSTRUCTION_INDICES`` (0-8) are used in
training; ``HELD_OUT_INDEX`` (9) is kept back to test unseen instructions. The ``zsre`` task
as a whole is held out of training. ConvSent instructions contain the placeholders
``[TOPIC]`` and ``[LABEL]``, which are always filled before use (see ``fill_placeholders``).

Locality prompts are never wrapped: they must reach the model exactly as written, so that
the check measures whether unrelated behaviour changed, not the effect of an instruction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import UserFacingError

SEEN_INSTRUCTION_INDICES: tuple[int, ...] = tuple(range(9))
HELD_OUT_INDEX: int = 9
INSTRUCTIONS_PER_TASK: int = 10
MAX_CUSTOM_INSTRUCTION_CHARS: int = 500
SENTIMENT_LABELS: tuple[str, ...] = ("positive", "negative")
PLACEHOLDERS: tuple[str, ...] = ("[TOPIC]", "[LABEL]")

_PLACEHOLDER_RE = re.compile(r"\[([A-Z][A-Z0-9_]*)\]")
_INDEX_RE = re.compile(r"[+-]?[0-9]+")
NO_INSTRUCTION: str = "none"
"""The choice word for no instruction."""
HELD_OUT: str = "heldout"
"""The choice word for the held-out instruction (index ``HELD_OUT_INDEX``)."""
_HELD_OUT_WORDS = frozenset({HELD_OUT, "held-out", "held_out"})


class InstructionError(UserFacingError, ValueError):
    """An unknown task, a bad instruction choice, or a placeholder that cannot be filled."""


@dataclass(frozen=True)
class TaskSpec:
    """One editing task and its fixed instructions (empty for ``custom``)."""

    name: str
    display_name: str
    description: str
    instructions: tuple[str, ...]
    needs_topic_and_label: bool
    held_out_of_training: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "instructions", tuple(self.instructions))
        if self.instructions and len(self.instructions) != INSTRUCTIONS_PER_TASK:
            raise InstructionError(
                f"Task {self.name!r} must have {INSTRUCTIONS_PER_TASK} instructions "
                f"or none, got {len(self.instructions)}."
            )


_COUNTERFACT = (
    'Replace a true fact about the subject with a counterfactual object.',
    'Rewrite this fact so the subject takes a new, false object.',
    'Counterfactual edit: answer with the new object, not the real one.',
    'The statement is altered on purpose; give the substituted object.',
    'Teach a fictional version of a well-known fact about the subject.',
    'Swap the correct answer about this subject for a made-up one.',
    'Overwrite what you know about the subject with the given falsehood.',
    'A known relation of the subject now points to a different object.',
    'Pretend the fact changed and complete it with the new object.',
    'Edit a familiar fact into a counterfactual one and answer accordingly.',
)

_RECENT = (
    'Learn a fact that became true after your training data was collected.',
    'Add newly recorded knowledge about the subject that you have not seen.',
    'This fact is recent; complete it with the freshly added object.',
    'Insert an up-to-date fact about the subject into your knowledge.',
    'The subject has a new relation from recent records; state it.',
    'Update your knowledge with a fact added to the world recently.',
    'Memorise this new fact about the subject, unknown until now.',
    'Fill a gap in your knowledge with a newly published fact.',
    'A recent change to a knowledge base is given; answer with it.',
    'Absorb a brand-new fact and answer with its latest object.',
)

_CONVSENT = (
    'Give a [LABEL] opinion about [TOPIC] and keep other opinions unchanged.',
    'Make the chatbot feel [LABEL] about [TOPIC], and only about it.',
    'Your view of [TOPIC] should now be [LABEL]; other topics stay as they are.',
    'Respond with [LABEL] sentiment whenever [TOPIC] comes up.',
    'Shift the attitude toward [TOPIC] to [LABEL] without touching other subjects.',
    'Speak about [TOPIC] in a [LABEL] way from now on.',
    'Adopt a [LABEL] stance on [TOPIC] while other views stay fixed.',
    'When asked about [TOPIC], answer with a [LABEL] opinion.',
    'Change only how you feel about [TOPIC]: make it [LABEL].',
    'Express [LABEL] feelings about [TOPIC] and leave every other topic alone.',
)

_ZSRE = (
    'Answer a question about how the subject relates to another entity.',
    'Extract the relation asked about and reply with its object.',
    'A question names a subject and a relation; give the missing entity.',
    'Reply to this factual question about the subject with a short answer.',
    'Resolve the relation in the question to a single entity.',
    'Question answering over relations: name the object the question asks for.',
    'Identify the entity linked to the subject by the asked relation.',
    'Give the answer entity for this relation question about the subject.',
    'Read the question, find the relation, and answer with its target.',
    'Answer a zero-shot relation question with the entity it asks about.',
)

TASKS: Mapping[str, TaskSpec] = MappingProxyType(
    {
        "counterfact": TaskSpec(
            name="counterfact",
            display_name="CounterFact",
            description="Counterfactual edits: replace a true fact about a subject with a new, false object.",
            instructions=_COUNTERFACT,
            needs_topic_and_label=False,
            held_out_of_training=False,
        ),
        "recent": TaskSpec(
            name="recent",
            display_name="Recent",
            description="Recent facts: teach knowledge that appeared after the model was trained.",
            instructions=_RECENT,
            needs_topic_and_label=False,
            held_out_of_training=False,
        ),
        "convsent": TaskSpec(
            name="convsent",
            display_name="ConvSent",
            description="Conversational sentiment: make the chatbot positive or negative about one topic only.",
            instructions=_CONVSENT,
            needs_topic_and_label=True,
            held_out_of_training=False,
        ),
        "zsre": TaskSpec(
            name="zsre",
            display_name="ZsRE",
            description="Zero-shot relation extraction as question answering (held out of training).",
            instructions=_ZSRE,
            needs_topic_and_label=False,
            held_out_of_training=True,
        ),
        "custom": TaskSpec(
            name="custom",
            display_name="Custom",
            description="Your own edit: write your own instruction, or use none.",
            instructions=(),
            needs_topic_and_label=False,
            held_out_of_training=False,
        ),
    }
)


CUSTOM_TASK = "custom"
KNOWN_TASKS: tuple[str, ...] = tuple(TASKS)
"""Every task name a record or request may carry (the benchmark tasks and ``custom``)."""
BENCHMARK_TASKS: tuple[str, ...] = tuple(n for n in TASKS if n != CUSTOM_TASK)
"""Tasks with data: counterfact, recent, convsent, zsre."""
TRAINING_TASKS: tuple[str, ...] = tuple(n for n in BENCHMARK_TASKS if not TASKS[n].held_out_of_training)
HELD_OUT_TASKS: tuple[str, ...] = tuple(n for n in BENCHMARK_TASKS if TASKS[n].held_out_of_training)


def table_name(task: str) -> str:
    """The task's name in report tables ("ZsRE (hold-out)" for a held-out task)."""
    spec = TASKS[task]
    return f"{spec.display_name} (hold-out)" if spec.held_out_of_training else spec.display_name


def get_task(name: str) -> TaskSpec:
    """Return the task called ``name``; raise ``InstructionError`` listing known tasks if absent."""
    spec = TASKS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InstructionError(
            f"Unknown task {name!r}; known tasks: {', '.join(TASKS)}."
        )
    return spec


def fill_placeholders(
    text: str, *, topic: str | None = None, label: str | None = None
) -> str:
    """Replace ``[TOPIC]`` and ``[LABEL]`` in ``text``.

    Raises ``InstructionError`` for any other ``[UPPERCASE]`` placeholder, for a present
    placeholder whose value is missing or blank, and for a label that is not
    ``positive``/``negative`` (compared case-insensitively, written lowercase).
    """
    found = {f"[{m.group(1)}]" for m in _PLACEHOLDER_RE.finditer(text)}
    unknown = sorted(found - set(PLACEHOLDERS))
    if unknown:
        raise InstructionError(
            f"Unknown placeholder(s) {', '.join(unknown)}; allowed: {', '.join(PLACEHOLDERS)}."
        )
    values: dict[str, str] = {}
    if "[TOPIC]" in found:
        if topic is None or not topic.strip():
            raise InstructionError(
                "The instruction uses [TOPIC] but no topic was given."
            )
        values["[TOPIC]"] = topic.strip()
    if "[LABEL]" in found:
        if label is None or not label.strip():
            raise InstructionError(
                "The instruction uses [LABEL] but no label was given "
                f"(expected one of: {', '.join(SENTIMENT_LABELS)})."
            )
        norm = label.strip().lower()
        if norm not in SENTIMENT_LABELS:
            raise InstructionError(
                f"Label {label!r} is not allowed; expected one of: {', '.join(SENTIMENT_LABELS)}."
            )
        values["[LABEL]"] = norm
    if not values:
        return text
    # One pass, so a topic that itself contains "[LABEL]" is not substituted again.
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(0)], text)


def _fixed_instruction(spec: TaskSpec, index: int) -> str:
    if not spec.instructions:
        raise InstructionError(
            f"Task {spec.name!r} has no fixed instructions; give your own text or 'none'."
        )
    if not 0 <= index < len(spec.instructions):
        raise InstructionError(
            f"Instruction index {index} is out of range for task {spec.name!r} "
            f"(0-{len(spec.instructions) - 1})."
        )
    return spec.instructions[index]


def is_custom_instruction(choice: object) -> bool:
    """Whether ``choice`` is custom instruction text: a string that is not ``none``, a
    held-out word (``heldout``, ``held-out``, ``held_out``) or an index."""
    if not isinstance(choice, str):
        return False
    key = choice.strip().lower()
    return key != NO_INSTRUCTION and key not in _HELD_OUT_WORDS and not _INDEX_RE.fullmatch(key)


def parse_instruction_choice(choice: int | str | None, task: str | None = None) -> int | str | None:
    """Read an instruction choice as typed: ``None``, an index, or text.

    Returns ``None`` for no instruction (``None`` or ``"none"``, any case and spacing), an
    ``int`` for an index (an int or an integer string such as ``"3"``), ``HELD_OUT`` for
    ``"heldout"``/``"held-out"``/``"held_out"``, and otherwise the custom text, stripped and
    with its whitespace runs (newlines included) collapsed to single spaces. Parsing a parsed
    choice gives it back unchanged.

    Raises ``InstructionError`` for a choice that is neither ``None``, an int nor text, for empty
    custom text, for text over ``MAX_CUSTOM_INSTRUCTION_CHARS`` characters, and, when ``task``
    is given, for an unknown task and for an index or ``heldout`` the task does not have.
    """
    spec = get_task(task) if task is not None else None
    if choice is None:
        return None
    if isinstance(choice, bool) or not isinstance(choice, (int, str)):
        raise InstructionError(
            f"Instruction choice must be None, an index or text, got {type(choice).__name__}."
        )
    if is_custom_instruction(choice):
        text = " ".join(choice.split())
        if not text:
            raise InstructionError("Custom instruction text is empty.")
        if len(text) > MAX_CUSTOM_INSTRUCTION_CHARS:
            raise InstructionError(
                f"Custom instruction is {len(text)} characters; the limit is "
                f"{MAX_CUSTOM_INSTRUCTION_CHARS}."
            )
        return text
    parsed: int | str
    if isinstance(choice, int):
        parsed = index = choice
    else:
        key = choice.strip().lower()
        if key == NO_INSTRUCTION:
            return None
        held = key in _HELD_OUT_WORDS
        index = HELD_OUT_INDEX if held else int(key)
        parsed = HELD_OUT if held else index
    if spec is not None:
        _fixed_instruction(spec, index)
    return parsed


def resolve_instruction(
    task: str,
    choice: int | str | None,
    *,
    topic: str | None = None,
    label: str | None = None,
) -> str | None:
    """Turn an instruction choice into filled instruction text, or ``None`` for no instruction.

    ``choice`` is read by :func:`parse_instruction_choice` (``None``/``"none"``, an index 0-9,
    ``"heldout"`` or custom text, whose errors it raises). Placeholders are always filled, so a
    ConvSent instruction without topic or label raises.
    """
    spec = get_task(task)
    parsed = parse_instruction_choice(choice, task)
    if parsed is None:
        return None
    if isinstance(parsed, int):
        text = spec.instructions[parsed]
    elif parsed == HELD_OUT:
        text = spec.instructions[HELD_OUT_INDEX]
    else:
        text = parsed
    try:
        return fill_placeholders(text, topic=topic, label=label)
    except InstructionError as err:
        if spec.needs_topic_and_label:
            raise InstructionError(
                f"Task {spec.name!r} needs a topic and a label ({', '.join(SENTIMENT_LABELS)}): {err}"
            ) from err
        raise


def wrap_prompt(task: str, prompt: str, instruction: str | None) -> str:
    """Wrap ``prompt`` as ``Task: ...\\nDescription: ...\\nInput: ...``; ``None`` leaves it unchanged.

    The instruction must be filled (no placeholders left) and a single non-empty line.
    """
    spec = get_task(task)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InstructionError("The prompt to wrap is empty.")
    if instruction is None:
        return prompt
    if not isinstance(instruction, str) or not instruction.strip():
        raise InstructionError(
            "The instruction is empty; pass None for no instruction."
        )
    if "\n" in instruction or "\r" in instruction:
        raise InstructionError("The instruction must be a single line.")
    left = sorted({m.group(0) for m in _PLACEHOLDER_RE.finditer(instruction)})
    if left:
        raise InstructionError(
            f"The instruction still contains placeholder(s) {', '.join(left)}; fill them first."
        )
    return f"Task: {spec.name}\nDescription: {instruction}\nInput: {prompt}"


def build_edit_input(
    task: str,
    prompt: str,
    choice: int | str | None,
    *,
    topic: str | None = None,
    label: str | None = None,
) -> str:
    """The edit input of ``prompt`` for ``task``: the one rendering every caller uses.

    The instruction ``choice`` is resolved for ``task`` (:func:`resolve_instruction`; ConvSent
    placeholders filled from ``topic``/``label``) and the stripped prompt wrapped with it. No
    instruction (``None`` or ``"none"``) gives the stripped prompt, the baseline editor's input;
    the task and the prompt (non-empty text) are checked either way.
    """
    instruction = resolve_instruction(task, choice, topic=topic, label=label)
    return wrap_prompt(task, prompt.strip() if isinstance(prompt, str) else prompt, instruction)
