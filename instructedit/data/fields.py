"""Field readers shared by the format converters.

Each reader raises :class:`RecordError` with a message of the form ``field 'NAME' ...`` that
names the field as it is spelled in the source file; the loader adds the file and the record
index in front.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from instructedit.data.records import RecordError

ANSWER_KEYS = ("ground_truth", "answer", "target", "target_new")


@dataclass(frozen=True)
class RawProbe:
    """A probe read from a source file: its kind, prompt and every accepted answer."""

    kind: str
    prompt: str
    aliases: tuple[str, ...]


def need_mapping(row: Any) -> Mapping[str, Any]:
    """The row itself, if it is a JSON object."""
    if not isinstance(row, Mapping):
        raise RecordError(f"must be a JSON object, got {type(row).__name__}")
    return row


def text(row: Mapping[str, Any], key: str, *, where: str | None = None) -> str:
    """A required non-empty string field, stripped."""
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if key not in row else f"got {value!r:.60}"
        raise RecordError(f"field '{where or key}' must be a non-empty string ({shown})")
    return value.strip()


def optional_text(row: Mapping[str, Any], key: str, *, where: str | None = None) -> str | None:
    """A string field that may be absent, null or empty (then ``None``)."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise RecordError(f"field '{where or key}' must be a string, got {type(value).__name__}")
    return value.strip()


def _dedupe(items: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return tuple(seen)


def answers(value: Any, where: str, *, required: bool = True) -> tuple[str, ...]:
    """Accepted answers from a string, a list of strings, or a list of alias lists.

    The result keeps every alias in order (duplicates dropped); its first item is the answer.
    An absent or empty optional value gives ``()``.
    """
    if value is None or (isinstance(value, str) and not value.strip()) or value == []:
        if required:
            raise RecordError(f"field '{where}' must be a non-empty string or list of strings"
                              f" (got {value!r:.60})")
        return ()
    if isinstance(value, str):
        return (value.strip(),)
    if not isinstance(value, list):
        raise RecordError(f"field '{where}' must be a string or a list, got {type(value).__name__}")
    flat: list[str] = []
    for i, item in enumerate(value):
        group = item if isinstance(item, list) else [item]
        for j, alias in enumerate(group):
            if not isinstance(alias, str) or not alias.strip():
                pos = f"[{i}][{j}]" if isinstance(item, list) else f"[{i}]"
                raise RecordError(f"field '{where}{pos}' must be a non-empty string, got {alias!r:.60}")
            flat.append(alias.strip())
    if not flat:
        if required:
            raise RecordError(f"field '{where}' must hold at least one answer")
        return ()
    return _dedupe(flat)


def prompts(value: Any, where: str) -> tuple[str, ...]:
    """Optional prompts given as a string or a list of strings (e.g. rephrases)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    if isinstance(value, str):
        return (value.strip(),)
    if not isinstance(value, list):
        raise RecordError(f"field '{where}' must be a string or a list of strings, "
                          f"got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise RecordError(f"field '{where}[{i}]' must be a non-empty string, got {item!r:.60}")
        out.append(item.strip())
    return tuple(out)


def _answer_of(probe: Mapping[str, Any], where: str) -> tuple[str, Any]:
    for key in ANSWER_KEYS:
        if key in probe:
            return key, probe[key]
    raise RecordError(f"field '{where}.ground_truth' is missing")


def _probe_list(kind: str, value: Any, where: str, allow_empty: bool) -> list[RawProbe]:
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise RecordError(f"field '{where}[{i}]' must be an object with prompt and "
                                  f"ground_truth, got {type(item).__name__}")
            prompt = text(item, "prompt", where=f"{where}[{i}].prompt")
            key, answer = _answer_of(item, f"{where}[{i}]")
            out.append(RawProbe(kind, prompt, answers(answer, f"{where}[{i}].{key}",
                                                      required=not allow_empty)))
        return out
    if isinstance(value, Mapping):
        raw_prompt = value.get("prompt")
        key, answer = _answer_of(value, where)
        if isinstance(raw_prompt, list):  # {prompt: [...], ground_truth: [...]} side by side
            if not isinstance(answer, list) or len(answer) != len(raw_prompt):
                raise RecordError(f"field '{where}.{key}' must be a list as long as "
                                  f"'{where}.prompt' ({len(raw_prompt)})")
            return [RawProbe(kind, text({"p": p}, "p", where=f"{where}.prompt[{i}]"),
                             answers(a, f"{where}.{key}[{i}]", required=not allow_empty))
                    for i, (p, a) in enumerate(zip(raw_prompt, answer, strict=True))]
        prompt = text(value, "prompt", where=f"{where}.prompt")
        return [RawProbe(kind, prompt, answers(answer, f"{where}.{key}", required=not allow_empty))]
    raise RecordError(f"field '{where}' must be a list of probes or an object, "
                      f"got {type(value).__name__}")


def probes(value: Any, where: str, default_kind: str, *, allow_empty: bool = False) -> list[RawProbe]:
    """Probes from ``{kind: [{prompt, ground_truth}]}``, ``{kind: {prompt: [...], ground_truth: [...]}}``,
    a single ``{prompt, ground_truth}`` object, or a plain list of such objects.

    With ``allow_empty`` a probe whose answer is empty gets ``aliases == ()`` instead of an error.
    """
    if value is None or value == {} or value == []:
        return []
    if isinstance(value, list):
        return _probe_list(default_kind, value, where, allow_empty)
    if not isinstance(value, Mapping):
        raise RecordError(f"field '{where}' must be an object or a list, got {type(value).__name__}")
    if "prompt" in value:
        return _probe_list(default_kind, value, where, allow_empty)
    out: list[RawProbe] = []
    for kind, group in value.items():
        if group in (None, [], {}):
            continue
        out.extend(_probe_list(str(kind), group, f"{where}.{kind}", allow_empty))
    return out
