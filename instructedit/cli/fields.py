"""Command-line options built from a config dataclass, and the dataclass built back from them.

:func:`add_fields` adds one option per field of a dataclass: the flag from the field's name
(``val_every`` -> ``--val-every``), the type from its annotation (``int``, ``float``, ``str``,
``Path``, optional or not; a ``tuple`` of them is one comma-separated value; a ``bool`` is one flag
that flips the default: ``--share`` for a field that defaults to False, ``--no-rome`` for one that
defaults to True), the default from the dataclass and the help text from the field's metadata
(``help``) or, usually, its entry in the class docstring's ``Attributes:`` section. :class:`Option`
overrides what a command's flag does differently (its name, choices, converter, metavar, help).
:func:`given_values` / :func:`build_config` read the dataclass back from the parsed namespace: the
destination of every option is its field's name, so a new field appears on the command line
without a hand copy (a field of a type the command line cannot read must be excluded explicitly).

Two ways to default: the dataclass's default in the namespace (``given_only=False``: the namespace
holds every field) or nothing (``given_only=True``: only the fields given on the command line, so
that they override another source, e.g. ``train --config FILE``). The help text shows the
dataclass's default either way.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

SCALARS = (int, float, str, Path)


@dataclass(frozen=True)
class Option:
    """How one field's option differs from the one derived from the field (``None``: derived).

    ``flag``: the option string (``--no-instructions`` for ``use_instructions``); ``type``: the
    converter of the text (instead of the annotation's); ``shown``: the default as the help text
    writes it (instead of the dataclass's value).
    """

    flag: str | None = None
    help: str | None = None
    choices: Sequence[Any] | None = None
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    shown: str | None = None


def flag_name(name: str) -> str:
    """``val_every`` -> ``--val-every``."""
    return "--" + name.replace("_", "-")


# ----- help texts from the docstring -------------------------------------------------------------
_ENTRY = re.compile(r"^(\w+(?:\s*,\s*\w+)*)\s*:\s+(.*)$")


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's text in the ``Attributes:`` section of ``cls``'s docstring (Google style: ``name:
    text`` or ``name, other: text``, continued on deeper-indented lines), on one line, markup kept."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    base = len(lines[start]) - len(lines[start].lstrip())
    entries: list[tuple[list[str], list[str]]] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= base:
            break
        indent = depth if indent is None else indent
        match = _ENTRY.match(line.strip()) if depth == indent else None
        if match:
            entries.append(([n.strip() for n in match.group(1).split(",")], [match.group(2)]))
        elif entries:
            entries[-1][1].append(line.strip())
    return {name: " ".join(" ".join(text).split()) for names, text in entries for name in names}


def plain_text(text: str, flags: Mapping[str, str] = {}) -> str:  # noqa: B006 - read only
    """Docstring markup as help text: ``x`` -> x (the flag of a field named x, when ``flags`` has
    it), :role:`~a.x` -> x; no final period."""
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]*)``", lambda m: flags.get(m.group(1), m.group(1)), text)
    return " ".join(text.split()).rstrip(".")


# ----- types ------------------------------------------------------------------------------------
def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def comma_separated(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    """A converter of ``a,b,c`` to a tuple of ``item(...)`` (blanks dropped)."""
    def convert(text: str) -> tuple:
        return tuple(item(part.strip()) for part in text.split(",") if part.strip())

    convert.__name__ = f"comma-separated {getattr(item, '__name__', 'value')}"
    return convert


def _converter(annotation: Any) -> Callable[[str], Any] | None:
    """The converter of a field's annotation; ``None`` if the command line cannot read it."""
    annotation = _unwrap_optional(annotation)
    if annotation in SCALARS:
        return annotation
    args = typing.get_args(annotation)
    if _is_tuple(annotation) and len(args) == 2 and args[1] is Ellipsis and args[0] in SCALARS:
        return comma_separated(args[0])
    return None


def _is_tuple(annotation: Any) -> bool:
    return typing.get_origin(_unwrap_optional(annotation)) is tuple


def _default(item: Field) -> Any:
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return MISSING


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _selected(cls: type, include: Iterable[str] | None, exclude: Iterable[str]) -> list[Field]:
    by_name = {f.name: f for f in fields(cls)}
    names = list(include) if include is not None else list(by_name)
    unknown = [n for n in [*names, *exclude] if n not in by_name]
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    return [by_name[n] for n in names if n not in set(exclude)]


# ----- the options and back ---------------------------------------------------------------------
def add_fields(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
               include: Iterable[str] | None = None, exclude: Iterable[str] = (),
               options: Mapping[str, Option] | None = None, given_only: bool = False) -> list[str]:
    """Add an option for each field of the dataclass ``cls`` (those of ``include``, in its order,
    else all in declaration order, less ``exclude``) to ``parser`` (or an argument group); returns
    the names of the fields added. See the module's docstring."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    options = dict(options or {})
    _selected(cls, options, ())  # an option of no field is a typo
    hints = typing.get_type_hints(cls)
    docs = field_help(cls)
    flags = {f.name: field_flag(f, hints[f.name], options.get(f.name)) for f in fields(cls)}
    added = []
    for item in _selected(cls, include, exclude):
        name, option, flag = item.name, options.get(item.name, Option()), flags[item.name]
        default = _default(item)
        text = plain_text(option.help or item.metadata.get("help") or docs.get(name) or "", flags)
        if not text:
            raise ValueError(f"{cls.__name__}.{name} has no help text: document it under "
                             "'Attributes:' in the class docstring")
        kwargs: dict[str, Any] = {"dest": name,
                                  "default": argparse.SUPPRESS if given_only or default is MISSING else default}
        if hints[name] is bool:
            kwargs["action"] = "store_false" if default is True else "store_true"
        else:
            convert = option.type or _converter(hints[name])
            if convert is None:
                raise TypeError(f"{cls.__name__}.{name}: the command line cannot read {hints[name]}; "
                                "exclude the field or give it an Option(type=...)")
            kwargs.update(type=convert, choices=option.choices)
            if option.metavar or option.choices is None:
                kwargs["metavar"] = option.metavar or flag.lstrip("-").upper().replace("-", "_")
            shown = option.shown if option.shown is not None else (
                None if default in (None, MISSING) else _shown(default))
            notes = ["comma-separated"] if _is_tuple(hints[name]) else []
            if shown is not None and "(default" not in text:
                notes.append(f"default: {shown}")
            if notes:
                text = f"{text} ({'; '.join(notes)})"
        parser.add_argument(flag, help=text.replace("%", "%%"), **kwargs)
        added.append(name)
    return added


def field_flag(item: Field, annotation: Any, option: Option | None = None) -> str:
    """The flag of a field: ``option.flag``, else from its name (``--no-<name>`` for a bool that
    defaults to True)."""
    if option is not None and option.flag:
        return option.flag
    negated = annotation is bool and _default(item) is True
    return flag_name(f"no_{item.name}" if negated else item.name)


def given_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``cls``'s fields in ``args`` (every option's destination is its field's name;
    with ``given_only`` only the fields given are there)."""
    present = vars(args)
    return {f.name: present[f.name] for f in fields(cls) if f.name in present}


def build_config(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """``cls`` from :func:`given_values` (the dataclass's defaults for the rest) and ``overrides``."""
    return cls(**{**given_values(cls, args), **overrides})
