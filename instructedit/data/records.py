"""The canonical edit record: every dataset format is converted into this one type."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserFacingError
from ..instructions import KNOWN_TASKS, SENTIMENT_LABELS


class RecordError(UserFacingError, ValueError):
    """A record (or a field of it) is malformed; the message names file, index and field."""


@dataclass(frozen=True)
class LocalityProbe:
    """An unrelated prompt whose answer must not change when the edit is applied."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class PortabilityProbe:
    """A question whose answer should follow from the edit (alias, reasoning, ...)."""

    prompt: str
    answer: str
    kind: str = "portability"


@dataclass(frozen=True)
class EditRecord:
    """One edit example, independent of its source format.

    ``target_new`` is the answer the edit teaches; ``target_aliases`` holds every accepted
    answer (``target_new`` first). For ConvSent records ``topic`` and ``label`` fill the
    instruction placeholders and ``responses`` holds responses of the target sentiment
    (``opposite_responses`` those of the other sentiment).
    """

    id: str
    task: str
    prompt: str
    target_new: str
    subject: str = ""
    ground_truth: str | None = None
    target_aliases: tuple[str, ...] = ()
    ground_truth_aliases: tuple[str, ...] = ()
    rephrases: tuple[str, ...] = ()
    locality: tuple[LocalityProbe, ...] = ()
    portability: tuple[PortabilityProbe, ...] = ()
    topic: str | None = None
    label: str | None = None
    responses: tuple[str, ...] = ()
    opposite_responses: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        validate_record(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the canonical on-disk format)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditRecord:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["locality"] = tuple(LocalityProbe(**p) for p in data.get("locality", ()))
        data["portability"] = tuple(PortabilityProbe(**p) for p in data.get("portability", ()))
        for key in ("target_aliases", "ground_truth_aliases", "rephrases", "responses",
                    "opposite_responses"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def _need_text(value: Any, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"field '{name}' must be a non-empty string, got {value!r:.80}")


def validate_record(record: EditRecord) -> None:
    """Raise :class:`RecordError` naming the offending field if ``record`` is malformed."""
    _need_text(record.id, "id")
    if record.task not in KNOWN_TASKS:
        raise RecordError(f"field 'task' must be one of {KNOWN_TASKS}, got {record.task!r}")
    _need_text(record.prompt, "prompt")
    _need_text(record.target_new, "target_new")
    for i, text in enumerate(record.rephrases):
        _need_text(text, f"rephrases[{i}]")
    for i, probe in enumerate(record.locality):
        _need_text(probe.prompt, f"locality[{i}].prompt")
        _need_text(probe.answer, f"locality[{i}].answer")
    for i, probe in enumerate(record.portability):
        _need_text(probe.prompt, f"portability[{i}].prompt")
        _need_text(probe.answer, f"portability[{i}].answer")
    if record.task == "convsent":
        _need_text(record.topic, "topic")
        if record.label not in SENTIMENT_LABELS:
            raise RecordError(f"field 'label' must be one of {SENTIMENT_LABELS}, got {record.label!r}")
