"""Task registry and instruction wrapping for InstructEdit (arXiv 2402.16123).

An edit prompt is wrapped with a task instruction before it reaches the editor::

    Task: {task}
    Description: {instruction}
    Input: {prompt}

(joined by single newlines; other code appends the target as ``" " + target``). ``{task}``
is the registry name (``counterfact``, ``recent``, ``convsent``, ``zsre`` or ``custom``).
With no instruction (``None``) the prompt is left unchanged: that is the baseline
editor's input.

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

SEEN_INSTRUCTION_INDICES: tuple[int, ...] = tuple(range(9))
HELD_OUT_INDEX: int = 9
INSTRUCTIONS_PER_TASK: int = 10
MAX_CUSTOM_INSTRUCTION_CHARS: int = 500
SENTIMENT_LABELS: tuple[str, ...] = ("positive", "negative")
PLACEHOLDERS: tuple[str, ...] = ("[TOPIC]", "[LABEL]")

_PLACEHOLDER_RE = re.compile(r"\[([A-Z][A-Z0-9_]*)\]")
_INDEX_RE = re.compile(r"[+-]?[0-9]+")
_HELD_OUT_WORDS = frozenset({"heldout", "held-out", "held_out"})


class InstructionError(ValueError):
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
    (
        "Each example rewrites a known fact about a subject into a counterfactual version, "
        "so answer with the new object that replaces the true one."
    ),
    (
        "The data consists of deliberately false statements about a subject, and the goal is "
        "to complete the prompt with the substituted object rather than the real one."
    ),
    (
        "Here a genuine fact about an entity has been overwritten with a fictional "
        "alternative, and you must give that alternative as the answer."
    ),
    (
        "Treat the edited, untrue version of this subject's fact as correct and finish the "
        "sentence with the replacement object."
    ),
    (
        "These are counterfactual edits in which the true object of a subject-relation pair "
        "is exchanged for a new, incorrect one that you should now report."
    ),
    (
        "Assume the world has changed so that this subject's attribute now has a different, "
        "counterfactual value, and complete the statement accordingly."
    ),
    (
        "The prompt concerns a fact about a subject whose real answer has been replaced by a "
        "false target, and your completion should state that target."
    ),
    (
        "This task injects counterfactual knowledge: forget the original object linked to the "
        "subject and respond with the newly assigned one."
    ),
    (
        "Each record pairs a subject and relation with a made-up object that contradicts "
        "reality, and you should produce that made-up object."
    ),
    (
        "A factual association about the subject has been altered to an untrue one on "
        "purpose, so reply using the altered object instead of the actual fact."
    ),
)

_RECENT = (
    (
        "This data describes facts that emerged after the model's training cutoff, and the "
        "task is to complete the prompt with this newly available knowledge."
    ),
    (
        "Each example states a recent development the model has never seen, so answer with "
        "the up-to-date object for the subject."
    ),
    (
        "The prompts ask about events and changes that happened after pretraining, and you "
        "should supply the current fact rather than outdated knowledge."
    ),
    (
        "Here the model learns fresh information missing from its training data by completing "
        "the sentence with the newly established answer."
    ),
    (
        "These records insert knowledge that appeared only recently, and the goal is to "
        "report the latest object associated with the subject."
    ),
    (
        "Update the model with a fact that became true after its knowledge was frozen, and "
        "finish the statement with that new fact."
    ),
    (
        "The task adds recently emerged facts about a subject that the model lacks, asking for "
        "the correct present-day completion."
    ),
    (
        "Each item reflects a real-world change newer than the model's training corpus, so "
        "respond with the object that holds today."
    ),
    (
        "This dataset supplies facts the model could not have known at training time, and you "
        "should answer with the newly learned object."
    ),
    (
        "Fill the gap in the model's outdated knowledge by completing the prompt with a fact "
        "that only came to light after it was trained."
    ),
)

_CONVSENT = (
    (
        "Adjust the chatbot's sentiment so that it expresses a [LABEL] opinion about [TOPIC] "
        "while keeping its views on every other subject unchanged."
    ),
    (
        "This task edits a conversational model's stance on [TOPIC] to be [LABEL], without "
        "altering how it talks about unrelated topics."
    ),
    (
        "When asked about [TOPIC], the assistant should now respond with a [LABEL] attitude, "
        "and its opinions on other matters must stay as they were."
    ),
    (
        "The data consists of dialogue prompts about [TOPIC], and the goal is to make the "
        "model's replies [LABEL] toward it while leaving other topics untouched."
    ),
    (
        "Steer the chatbot's feelings about [TOPIC] in a [LABEL] direction, limiting the "
        "change to that single topic."
    ),
    (
        "Give the model a [LABEL] view of [TOPIC] in conversation, but preserve its original "
        "sentiment on anything else."
    ),
    (
        "Each example asks for the dialogue agent's opinion of [TOPIC], which should be "
        "rewritten to sound [LABEL] without affecting other subjects."
    ),
    (
        "Make the chatbot speak about [TOPIC] in a consistently [LABEL] tone, keeping this "
        "sentiment change confined to that topic alone."
    ),
    (
        "This sentiment edit targets the model's opinion on [TOPIC] only, turning it [LABEL] "
        "while all other opinions remain the same."
    ),
    (
        "Rewrite how the conversational assistant feels about [TOPIC] so its answers become "
        "[LABEL], and leave its sentiment about other topics as it is."
    ),
)

_ZSRE = (
    (
        "This task frames relation extraction as question answering, so answer the question "
        "about the subject's relation with the correct object."
    ),
    (
        "Each example is a question asking for the entity linked to a subject by a particular "
        "relation, and you should respond with that entity."
    ),
    (
        "Zero-shot relation extraction is posed here as a question, and the goal is to name "
        "the object that the given relation connects to the subject."
    ),
    (
        "Read the question about one attribute of a subject and reply with the value of that "
        "relation."
    ),
    (
        "The data turns subject-relation pairs into natural-language questions, asking you to "
        "supply the missing object."
    ),
    (
        "Answer this relation-focused question about an entity by giving the object that "
        "completes the relation."
    ),
    (
        "Here a relation between a subject and an unknown object is expressed as a question, "
        "which you should answer with the object."
    ),
    (
        "These questions probe a single relation of a subject without any worked examples, and "
        "the answer is the related entity."
    ),
    (
        "Treat the prompt as a question about how a subject is related to something else and "
        "provide that related entity."
    ),
    (
        "Given a question that asks for one relational fact about a subject, extract and state "
        "the answer entity."
    ),
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


def resolve_instruction(
    task: str,
    choice: int | str | None,
    *,
    topic: str | None = None,
    label: str | None = None,
) -> str | None:
    """Turn an instruction choice into filled instruction text, or ``None`` for no instruction.

    ``choice`` is ``None``/``"none"`` (no instruction), an index 0-9 (int or digit string),
    ``"heldout"`` (index ``HELD_OUT_INDEX``) or custom text. Custom text is stripped, its
    whitespace runs (newlines included) collapsed to single spaces, and it must be
    non-empty and at most ``MAX_CUSTOM_INSTRUCTION_CHARS`` characters. Placeholders are
    always filled, so a ConvSent instruction without topic or label raises.
    """
    spec = get_task(task)
    if choice is None:
        return None
    if isinstance(choice, bool) or not isinstance(choice, (int, str)):
        raise InstructionError(
            f"Instruction choice must be None, an index or text, got {type(choice).__name__}."
        )
    if isinstance(choice, int):
        text = _fixed_instruction(spec, choice)
    else:
        key = choice.strip()
        if key.lower() == "none":
            return None
        if key.lower() in _HELD_OUT_WORDS:
            text = _fixed_instruction(spec, HELD_OUT_INDEX)
        elif _INDEX_RE.fullmatch(key):
            text = _fixed_instruction(spec, int(key))
        else:
            text = " ".join(key.split())
            if not text:
                raise InstructionError("Custom instruction text is empty.")
            if len(text) > MAX_CUSTOM_INSTRUCTION_CHARS:
                raise InstructionError(
                    f"Custom instruction is {len(text)} characters; the limit is "
                    f"{MAX_CUSTOM_INSTRUCTION_CHARS}."
                )
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
    """Resolve the instruction ``choice`` for ``task`` and wrap ``prompt`` with it."""
    return wrap_prompt(
        task, prompt, resolve_instruction(task, choice, topic=topic, label=label)
    )
