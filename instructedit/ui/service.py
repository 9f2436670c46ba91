"""Every user action of the app, given a session id: edit, undo, remove, reset, export, import,
generate. No Gradio here, so all of it is unit- and stress-testable without a browser.

An edit is measured as a user sees it (the prompt as typed, see :mod:`.measure`) and as the
editor read it, then its blast radius is probed (:mod:`.blast`), for both editors.

The backbone and editors are shared and never modified; a session's edits are patches that are
activated (per thread, see :class:`~instructedit.patches.PatchEngine`) only around that
session's own model calls.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..backbone import Backbone
from ..editor import Edit, Editor, EditRequest
from ..errors import UserFacingError, sentence
from ..patches import Patch
from .blast import BlastPlan, BlastPlanner, measure_blast
from .config import Limits
from .errors import UserError
from .history import HistoryEntry, ImportedEdit, export_payload, parse_history, write_json_atomic
from .measure import EditReport, GenerationCache, generate_under, measure_edit
from .sessions import Session, SessionStore

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@contextlib.contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Turn the core's expected errors into :class:`UserError` (a readable sentence)."""
    try:
        yield
    except UserError:
        raise
    except UserFacingError as exc:
        raise UserError(sentence(prefix + str(exc))) from exc


@dataclass(frozen=True)
class EditOutcome:
    """The result of one edit: the new history entry, both reports, and the session's history."""

    entry: HistoryEntry
    report: EditReport
    baseline_report: EditReport | None
    baseline_error: str | None
    history: list[HistoryEntry]
    total_ms: float


def check_text(name: str, value: str) -> None:
    """Refuse text that is not valid Unicode (unpaired surrogates cannot be tokenized)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"The {name} is not valid text (it contains an unpaired surrogate "
                        "character).") from None


def _no_progress(fraction: float, message: str) -> None:
    return None


class EditService:
    """The app's actions on a shared backbone, an InstructEdit editor and an optional baseline.

    Args:
        backbone: the loaded model (shared, frozen).
        editor: the InstructEdit editor (its edits are the session's active edits).
        baseline: an editor without instructions shown for comparison, or ``None``.
        limits: server limits (see :class:`~instructedit.ui.config.Limits`).
        store: the session store (a new one sized by ``limits`` by default).
        export_dir: where exported files are written (a temporary folder by default).
        blast: builds each edit's blast radius probes (built-in subject lists, no data, by
            default; the app passes one with the data's same-template neighbours).
    """

    def __init__(self, backbone: Backbone, editor: Editor, baseline: Editor | None = None,
                 limits: Limits | None = None, store: SessionStore | None = None,
                 export_dir: str | Path | None = None, blast: BlastPlanner | None = None) -> None:
        self.backbone = backbone
        self.editor = editor
        self.baseline = baseline
        self.limits = limits or Limits()
        self.blast = blast or BlastPlanner()
        self.store = store or SessionStore(self.limits.max_edits_per_session,
                                           self.limits.idle_timeout_s, self.limits.max_sessions)
        self.export_dir = Path(export_dir or tempfile.mkdtemp(prefix="instructedit-exports-"))

    @property
    def model_id(self) -> str:
        return self.backbone.model_id

    # ----- checks ---------------------------------------------------------------------------
    def check_request(self, request: EditRequest) -> None:
        """Server-side limits on a request (the page's boxes have the same caps)."""
        limit = self.limits.max_input_chars
        fields = {"prompt": request.prompt, "target": request.target, "topic": request.topic or "",
                  "subject": request.subject or ""}
        if isinstance(request.instruction, str):
            fields["instruction"] = request.instruction
        for name, value in fields.items():
            check_text(name, value)
            if len(value) > limit:
                raise UserError(f"The {name} is {len(value)} characters long; the limit is {limit}.")
        for name, items in (("rephrases", request.rephrases), ("locality probes", request.probes)):
            if len(items) > self.limits.max_lines:
                raise UserError(f"There are {len(items)} {name}; the limit is {self.limits.max_lines}.")
            for item in items:
                check_text(f"one of the {name}", item)
                if len(item) > limit:
                    raise UserError(f"One of the {name} is {len(item)} characters long; the limit is {limit}.")
        with user_errors():
            request.edit_input(True)  # resolves the instruction and placeholders

    def check_total(self, extra: int, replacing: int = 0) -> None:
        """Refuse ``extra`` more edits when the server's cap over all sessions would be passed."""
        total = self.store.stats()["edits"] - replacing
        if total + extra > self.limits.max_total_edits:
            raise UserError(f"The server already holds {total} active edits over all sessions (the limit "
                            f"is {self.limits.max_total_edits}); try again later.")

    # ----- editing --------------------------------------------------------------------------
    def _measure(self, editor: Editor, edit: Edit, before: Sequence[Patch], plan: BlastPlan | None, *,
                 texts: bool, cache: GenerationCache) -> EditReport:
        """The report of ``edit`` (made on top of ``before``) and, with a plan, its blast radius."""
        limits = self.limits
        report = measure_edit(self.backbone, edit, editor.use_instructions, before, limits.max_new_tokens,
                              limits.probe_answer_tokens, texts=texts, cache=cache)
        if plan is None:
            return report
        start = time.perf_counter()
        blast = measure_blast(self.backbone, before, [*before, edit.patch], plan, edit.request.target,
                              max_new_tokens=limits.max_new_tokens, cache=cache,
                              says_target=report.says_target)
        blast_ms = (time.perf_counter() - start) * 1000
        log.debug("%s: measured in %.0f ms, blast radius (%d probes) in %.0f ms", editor.name,
                  report.measure_ms, len(plan.probes), blast_ms)
        return dataclasses.replace(report, blast=blast, measure_ms=report.measure_ms + blast_ms)

    def _edit_one(self, request: EditRequest, prior: Sequence[HistoryEntry], *, texts: bool,
                  cache: GenerationCache, progress: Progress, start: float = 0.0, span: float = 1.0,
                  kind: str | None = None) -> tuple[HistoryEntry, EditReport, EditReport | None, str | None]:
        """Edit with both editors on top of ``prior``; the session is not changed here.

        With ``texts`` (a new edit, not an import) the blast radius is probed too (``kind``: the
        kind of subject chosen by the user, or guessed).
        """
        if texts and not prior and self.baseline is not None:
            progress(start, "Reading the model's answers before the edit")
            self._prefill_before(request, cache)
        progress(start, "InstructEdit: computing the edit")
        active = [e.edit for e in prior]
        with user_errors():
            edit = self.editor.edit(request, active=active)
        plan = self.blast.plan(request, kind) if texts else None  # once the request is known valid
        progress(start + 0.25 * span, "InstructEdit: measuring before and after, probing the blast radius")
        report = self._measure(self.editor, edit, [e.patch for e in active], plan, texts=texts, cache=cache)
        base_edit = base_report = base_error = None
        if self.baseline is not None:
            progress(start + 0.5 * span, "Baseline: computing the same edit without instruction")
            base_active = [e.baseline for e in prior if e.baseline is not None]
            try:
                with user_errors("the baseline editor failed: "):
                    base_edit = self.baseline.edit(request, active=base_active)
                progress(start + 0.75 * span, "Baseline: measuring before and after, probing the blast radius")
                base_report = self._measure(self.baseline, base_edit, [e.patch for e in base_active], plan,
                                            texts=texts, cache=cache)
            except UserError as exc:
                base_edit, base_error = None, str(exc)
        entry = HistoryEntry(edit, report.scores, base_edit, base_report.scores if base_report else None,
                             blast=report.blast)
        return entry, report, base_report, base_error

    def _prefill_before(self, request: EditRequest, cache: GenerationCache) -> None:
        """With no earlier edits both editors start from the same model: generate every text
        either of them shows before the edit in one batch (one call instead of two). The prompt
        as typed is generated on its own, as the Playground does (see :func:`measure_edit`)."""
        n = self.limits.max_new_tokens
        plain = request.prompt.strip()
        generate_under(self.backbone, [], [plain], n, cache)
        texts: list[str] = [*request.rephrases, *request.probes]
        for editor in (self.editor, self.baseline):
            flag = editor.use_instructions
            texts += [request.edit_input(flag), *(request.wrap(r, flag) for r in request.rephrases)]
        generate_under(self.backbone, [], [plain, *texts], n, cache)

    def edit(self, session_id: str, request: EditRequest, progress: Progress | None = None,
             kind: str | None = None) -> EditOutcome:
        """Apply ``request`` on top of the session's edits; returns reports before/after.

        ``kind``: the kind of the edit's subject for its blast radius (None or "auto": guessed).
        """
        progress = progress or _no_progress
        start = time.perf_counter()
        self.check_request(request)
        self.check_total(1)  # before the session is opened: a refused request creates no session
        with self.store.open(session_id) as session:
            self.store.check_room(session)
            self.check_total(1)
            entry, report, base_report, base_error = self._edit_one(
                request, session.entries, texts=True, cache={}, progress=progress, kind=kind)
            session.entries.append(entry)
            history = list(session.entries)
        total = (time.perf_counter() - start) * 1000
        log.info("session %s: edit %s in %.0f ms (%d active)", session_id[:8], entry.id, total, len(history))
        return EditOutcome(entry, report, base_report, base_error, history, total)

    # ----- history --------------------------------------------------------------------------
    def history(self, session_id: str) -> list[HistoryEntry]:
        """The session's active edits, oldest first."""
        return self.store.entries(session_id)

    def undo(self, session_id: str) -> HistoryEntry:
        """Remove the most recent edit."""
        with self.store.open(session_id) as session:
            if not session.entries:
                raise UserError("There is no edit to undo.")
            return session.entries.pop()

    def remove(self, session_id: str, edit_id: str) -> HistoryEntry:
        """Remove one edit by id; later edits stay (they were computed on top of it)."""
        edit_id = (edit_id or "").strip()
        with self.store.open(session_id) as session:
            for i, entry in enumerate(session.entries):
                if entry.id == edit_id:
                    return session.entries.pop(i)
        raise UserError(f"No active edit has the id {edit_id!r}." if edit_id else "Pick an edit to remove.")

    def reset(self, session_id: str) -> int:
        """Remove every edit of the session; returns how many there were."""
        with self.store.open(session_id) as session:
            count = len(session.entries)
            session.entries.clear()
            return count

    def close(self, session_id: str) -> None:
        """Forget the session (its tab was closed)."""
        self.store.drop(session_id)

    # ----- export / import ------------------------------------------------------------------
    def export(self, session_id: str) -> dict:
        """The session's history as a JSON-able document."""
        baseline = self.baseline.name if self.baseline is not None else None
        return export_payload(self.history(session_id), self.model_id, self.editor.name, baseline)

    def export_file(self, session_id: str) -> Path:
        """Write the session's history to a new JSON file (atomically) and return its path."""
        payload = self.export(session_id)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        folder = self.export_dir / re.sub(r"[^A-Za-z0-9_-]", "_", session_id)[:64]
        return write_json_atomic(folder / f"instructedit-history-{stamp}.json", payload)

    def import_history(self, session_id: str, raw: bytes | str, progress: Progress | None = None,
                       ) -> list[HistoryEntry]:
        """Replace the session's edits with those of a history file, recomputed on this model.

        The file is checked completely and every edit recomputed before anything changes; on any
        problem a :class:`UserError` says which edit and why, and the session is left as it was.
        """
        progress = progress or _no_progress
        items = parse_history(raw, self.model_id, self.limits.max_edits_per_session,
                              self.limits.max_import_bytes)
        for n, item in enumerate(items, 1):
            try:
                self.check_request(item.request)
            except UserError as exc:
                raise UserError(f"Edit {n} of the file: {exc} Nothing was imported.") from None
        with self.store.open(session_id) as session:
            self.check_total(len(items), replacing=len(session.entries))
            entries = self._recompute(items, progress)
            session.entries[:] = entries
            log.info("session %s: imported %d edits", session_id[:8], len(entries))
            return list(entries)

    def _recompute(self, items: Sequence[ImportedEdit], progress: Progress) -> list[HistoryEntry]:
        entries: list[HistoryEntry] = []
        cache: GenerationCache = {}
        for n, item in enumerate(items):
            span = 1.0 / max(1, len(items))
            try:
                entry, *_ = self._edit_one(item.request, entries, texts=False, cache=cache,
                                           progress=progress, start=n * span, span=span)
            except UserError as exc:
                raise UserError(f"Edit {n + 1} of the file could not be re-applied: {exc} "
                                "Nothing was imported.") from None
            entry.edit = dataclasses.replace(entry.edit, id=item.id, created_at=item.created_at)
            entries.append(entry)
        return entries

    # ----- playground -----------------------------------------------------------------------
    def generate(self, session_id: str, prompt: str, max_new_tokens: int | None = None,
                 ) -> tuple[str, str]:
        """Greedy continuations of ``prompt`` without and with the session's edits."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise UserError("The prompt is empty: type some text to continue.")
        check_text("prompt", prompt)
        if len(prompt) > self.limits.max_input_chars:
            raise UserError(f"The prompt is {len(prompt)} characters long; the limit is "
                            f"{self.limits.max_input_chars}.")
        n = self.limits.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= n <= self.limits.max_new_tokens:
            raise UserError(f"Tokens to generate must be between 1 and {self.limits.max_new_tokens}.")
        patches = [e.edit.patch for e in self.history(session_id)]
        without = generate_under(self.backbone, [], [prompt], n)[prompt]
        with_edits = generate_under(self.backbone, patches, [prompt], n)[prompt] if patches else without
        return without, with_edits

    def stats(self) -> dict:
        return self.store.stats()


__all__ = ["EditService", "EditOutcome", "UserError", "Session", "user_errors"]
