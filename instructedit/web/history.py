"""A session's edit history and its JSON file format (export and import).

An exported file records the requests, not the patches: importing recomputes every edit on the
server's model, so a file is small, readable, and cannot smuggle weights in. The file names the
model it was made on; another model's file is refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..editing.editor import Edit, EditRequest
from ..instructions import TASKS
from ..io_utils import atomic_file
from ..measuring.single import EditScores
from .blast import BlastRadius
from .comparison import BASELINE, ROME
from .errors import UserError

FORMAT = "instructedit-studio-history"
VERSION = 1
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")


@dataclass
class HistoryEntry:
    """One active edit of a session: InstructEdit's edit and, when shown, the baseline's and
    ROME's (each comparison slot stacks its own edits), and InstructEdit's blast radius (not
    measured for imported edits)."""

    edit: Edit
    scores: EditScores
    baseline: Edit | None = None
    baseline_scores: EditScores | None = None
    blast: BlastRadius | None = None
    rome: Edit | None = None
    rome_scores: EditScores | None = None

    def compared(self, slot: str) -> tuple[Edit | None, EditScores | None]:
        """The edit and scores of a comparison slot (``baseline`` or ``rome``)."""
        return {BASELINE: (self.baseline, self.baseline_scores), ROME: (self.rome, self.rome_scores)}[slot]

    def set_compared(self, slot: str, edit: Edit | None, scores: EditScores | None) -> None:
        if slot == BASELINE:
            self.baseline, self.baseline_scores = edit, scores
        elif slot == ROME:
            self.rome, self.rome_scores = edit, scores
        else:
            raise KeyError(slot)

    @property
    def id(self) -> str:
        return self.edit.id

    @property
    def request(self) -> EditRequest:
        return self.edit.request


@dataclass(frozen=True)
class ImportedEdit:
    """One edit read from a history file: the request to recompute, with its id and time."""

    id: str
    created_at: str
    request: EditRequest


def request_to_dict(request: EditRequest) -> dict[str, Any]:
    return {"task": request.task, "instruction": request.instruction, "topic": request.topic,
            "label": request.label, "prompt": request.prompt, "target": request.target,
            "subject": request.subject, "rephrases": list(request.rephrases),
            "probes": list(request.probes)}


def export_payload(entries: list[HistoryEntry], model_id: str, editor: str,
                   baseline: str | None, rome: str | None = None) -> dict[str, Any]:
    """The JSON document of a history (oldest edit first); ``rome``: ROME's name when shown."""
    def scores(value: EditScores | None) -> dict[str, Any] | None:
        return value.to_dict() if value else None

    return {
        "format": FORMAT, "version": VERSION, "model_id": model_id, "editor": editor,
        "baseline_editor": baseline, "rome_editor": rome,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edits": [{"id": e.id, "created_at": e.edit.created_at, **request_to_dict(e.request),
                   "wrapped_input": e.edit.wrapped_input, "scores": e.scores.to_dict(),
                   "baseline_scores": scores(e.baseline_scores), "rome_scores": scores(e.rome_scores)}
                  for e in entries],
    }


def write_json_atomic(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False, indent=1)
        handle.write("\n")
    return path


def _text(item: dict, key: str, where: str, optional: bool = False) -> str | None:
    value = item.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise UserError(f"{where}: field '{key}' must be {'text' if optional else 'non-empty text'}.")
    return value


def _texts(item: dict, key: str, where: str) -> tuple[str, ...]:
    value = item.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UserError(f"{where}: field '{key}' must be a list of non-empty texts.")
    return tuple(v.strip() for v in value)


def _instruction(item: dict, where: str) -> int | str | None:
    value = item.get("instruction")
    if value is None or (isinstance(value, str) and value.strip()):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise UserError(f"{where}: field 'instruction' must be an index, 'heldout', text or null.")


def _created_at(item: dict) -> str:
    value = item.get("created_at")
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
            return value
        except ValueError:
            pass
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_history(raw: bytes | str, model_id: str, max_edits: int, max_bytes: int) -> list[ImportedEdit]:
    """Read and check a history file; raise :class:`UserError` naming the first problem."""
    if len(raw) > max_bytes:
        raise UserError(f"The file is {len(raw):,} bytes; the limit is {max_bytes:,}.")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"The file is not valid JSON ({str(exc).splitlines()[0][:120]}).") from None
    except RecursionError:
        raise UserError("The file is not valid JSON for this app (it is nested too deeply).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError("This is not an InstructEdit Studio history file (use one made by Export).")
    if data.get("version") != VERSION:
        raise UserError(f"History file version {data.get('version')!r} is not supported "
                        f"(this app reads version {VERSION}).")
    if data.get("model_id") != model_id:
        raise UserError(f"The history was made on model {data.get('model_id')!r}, but this app runs "
                        f"{model_id!r}; edits cannot move between models.")
    edits = data.get("edits")
    if not isinstance(edits, list):
        raise UserError("The history file has no 'edits' list.")
    if len(edits) > max_edits:
        raise UserError(f"The file has {len(edits)} edits; a session holds at most {max_edits}.")
    out: list[ImportedEdit] = []
    seen: set[str] = set()
    for n, item in enumerate(edits, 1):
        where = f"edit {n}"
        if not isinstance(item, dict):
            raise UserError(f"{where} is not an object.")
        task = _text(item, "task", where)
        if task not in TASKS:
            raise UserError(f"{where}: unknown task {task!r}.")
        request = EditRequest(prompt=_text(item, "prompt", where).strip(),
                              target=_text(item, "target", where).strip(), task=task,
                              instruction=_instruction(item, where),
                              topic=_text(item, "topic", where, optional=True),
                              label=_text(item, "label", where, optional=True),
                              subject=_text(item, "subject", where, optional=True),
                              rephrases=_texts(item, "rephrases", where),
                              probes=_texts(item, "probes", where))
        edit_id = item.get("id")
        if not isinstance(edit_id, str) or not _ID_RE.fullmatch(edit_id) or edit_id in seen:
            edit_id = Edit.__dataclass_fields__["id"].default_factory()
        seen.add(edit_id)
        out.append(ImportedEdit(edit_id, _created_at(item), request))
    return out
