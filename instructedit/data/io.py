"""Reading raw rows from JSON / JSONL / CSV files and writing canonical record files."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from instructedit.data.records import EditRecord, RecordError

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)


def read_rows(path: str | Path) -> list[Any]:
    """The raw rows of a ``.json`` (a list), ``.jsonl`` (one object a line) or ``.csv`` file.

    Raises :class:`FileNotFoundError` for a missing file and :class:`RecordError` (naming the
    file, and the line for JSONL) for anything that cannot be parsed.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise RecordError(f"{name}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise RecordError(f"{name}: cannot read file: {err.strerror or err}") from None
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _parse_csv(text, name)
    if suffix in JSONL_SUFFIXES:
        return _parse_jsonl(text, name)
    return _parse_json(text, name)


def _parse_json(text: str, name: str) -> list[Any]:
    stripped = text.lstrip()
    if not stripped:
        raise RecordError(f"{name}: the file is empty (expected a JSON list of records)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if stripped.startswith("{") and "\n{" in text:
            return _parse_jsonl(text, name)  # JSONL content in a .json file
        raise RecordError(f"{name}: invalid JSON at line {err.lineno}, column {err.colno}: "
                          f"{err.msg}") from None
    if isinstance(data, dict):
        raise RecordError(f"{name}: expected a JSON list of records, got an object with keys "
                          f"{sorted(data)[:8]}")
    if not isinstance(data, list):
        raise RecordError(f"{name}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _parse_jsonl(text: str, name: str) -> list[Any]:
    rows: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise RecordError(f"{name}: line {lineno}: invalid JSON at column {err.colno}: "
                              f"{err.msg}") from None
    return rows


def _parse_csv(text: str, name: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise RecordError(f"{name}: the CSV file has no header row")
    rows: list[dict[str, str]] = []
    for index, raw in enumerate(reader):
        if None in raw:
            raise RecordError(f"{name}: record {index}: more cells than header columns")
        rows.append({key.strip(): (value or "") for key, value in raw.items()})
    return rows


def write_records(path: str | Path, records: Iterable[EditRecord]) -> Path:
    """Write records in the canonical format (``.jsonl``: one a line; otherwise a JSON list)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dicts = [record.to_dict() for record in records]
    if path.suffix.lower() in JSONL_SUFFIXES:
        text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dicts)
    else:
        text = json.dumps(dicts, ensure_ascii=False, indent=1) + "\n"
    path.write_text(text, encoding="utf-8")
    return path
