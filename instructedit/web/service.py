"""Every user action of the app, given a session id: edit, undo, remove, reset, export, import,
generate. No Gradio here, so all of it is unit- and stress-testable without a browser.

An edit is measured (:mod:`instructedit.measuring.single`) as a user sees it (the prompt as
typed) and as the editor read it, then its blast radius is probed (:mod:`.blast`), for
InstructEdit and then for each comparison editor shown (the baseline, ROME: :mod:`.comparison`); ``on_update`` hands over
each step as it is ready, first a look at the prompt as typed before and after InstructEdit's
edit (two short generations, the one before from a server-wide memory of the unedited model's
continuations when it has it), so the page shows it at once. Then the baseline edits, and one
generation call continues everything both reports show before and after (their probes in full,
both blast radii to their first sentences); the measures read it from the request's cache.
Causal tracing of a prompt ("Where is this fact?", :mod:`.tracing_view`) runs on the unedited model.

The backbone and editors are shared and never modified; a session's edits are patches that are
activated (per thread, see :class:`~instructedit.editing.patches.PatchEngine`) only around that
session's own model calls. With ``Limits.batch_window_ms`` set, generation calls of edits, imports
and the Playground go through one :class:`~instructedit.serving.batcher.GenerationBatcher`, which
runs calls of different sessions that arrive together as one batch, each row under its own
session's edits.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..editing.editor import Edit, Editor, EditRequest
from ..editing.keying import find_subject
from ..editing.patches import Patch
from ..errors import UserFacingError, sentence
from ..measuring.probing import GenerationCache, UneditedTexts, generate_jobs, generate_under
from ..measuring.single import EditReport, edit_probes, measure_edit, measure_first_look
from ..model.backbone import Backbone
from ..serving.batcher import GenerationBatcher
from .blast import BlastPlan, BlastPlanner, measure_blast
from .comparison import BASELINE, INSTRUCTEDIT, ROME, SLOT_INFO, SLOTS, rome_subject_problem
from .config import Limits
from .errors import UserError
from .history import HistoryEntry, ImportedEdit, export_payload, parse_history, write_json_atomic
from .sessions import Session, SessionStore
from .tracing_view import TraceView, run_trace

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


Compared = dict[str, tuple[EditReport | None, str | None]]
"""Per comparison slot shown: its report, or None and the sentence saying why it failed."""


@dataclass(frozen=True)
class EditOutcome:
    """The result of one edit: the new history entry, the reports of InstructEdit and of the
    comparison editors (the baseline, ROME; ``None`` when not shown or failed, with the error's
    sentence), and the session's history.

    ``pending``: what is still being computed (``instructedit`` while its report is a first
    look, then the comparison slots); only the early outcomes that :meth:`EditService.edit`
    hands to ``on_update`` have any (their ``history`` already ends with the new entry).
    """

    entry: HistoryEntry
    report: EditReport
    baseline_report: EditReport | None
    baseline_error: str | None
    history: list[HistoryEntry]
    total_ms: float
    rome_report: EditReport | None = None
    rome_error: str | None = None
    pending: tuple[str, ...] = ()

    def compared(self, slot: str) -> tuple[EditReport | None, str | None]:
        """The report and error of a comparison slot (``baseline`` or ``rome``)."""
        return {BASELINE: (self.baseline_report, self.baseline_error),
                ROME: (self.rome_report, self.rome_error)}[slot]


def _edit_ids(entries: Sequence[HistoryEntry]) -> tuple[str, ...]:
    return tuple(e.id for e in entries)


def check_text(name: str, value: str) -> None:
    """Refuse text that is not valid Unicode (unpaired surrogates cannot be tokenized)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"The {name} is not valid text (it contains an unpaired surrogate "
                        "character).") from None


def _no_progress(fraction: float, message: str) -> None:
    return None


def _folder_name(session_id: str) -> str:
    """A session's folder name (its files: exports, heatmaps)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", session_id)[:64]


class EditService:
    """The app's actions on a shared backbone, an InstructEdit editor and optional comparison
    editors (a baseline, ROME).

    Args:
        backbone: the loaded model (shared, frozen).
        editor: the InstructEdit editor (its edits are the session's active edits).
        baseline: an editor without instructions shown for comparison, or ``None``.
        limits: server limits (see :class:`~instructedit.web.config.Limits`).
        store: the session store (a new one sized by ``limits`` by default).
        export_dir: where exported files are written (a temporary folder by default).
        blast: builds each edit's blast radius probes (built-in subject lists, no data, by
            default; the app passes one with the data's same-template neighbours).
        rome: a ROME editor (:class:`~instructedit.editing.rome.RomeEditor`) shown for comparison, or
            ``None``; it edits the request's subject.
        trace_dir: where causal tracing heatmaps are drawn (a temporary folder by default).
    """

    def __init__(self, backbone: Backbone, editor: Editor, baseline: Editor | None = None,
                 limits: Limits | None = None, store: SessionStore | None = None,
                 export_dir: str | Path | None = None, blast: BlastPlanner | None = None,
                 rome: Editor | None = None, trace_dir: str | Path | None = None) -> None:
        self.backbone = backbone
        self.editor = editor
        self.baseline = baseline
        self.rome = rome
        self.limits = limits or Limits()
        self.blast = blast or BlastPlanner()
        self.store = store or SessionStore(self.limits.max_edits_per_session,
                                           self.limits.idle_timeout_s, self.limits.max_sessions)
        self.export_dir = Path(export_dir or tempfile.mkdtemp(prefix="instructedit-exports-"))
        self.trace_dir = Path(trace_dir or tempfile.mkdtemp(prefix="instructedit-traces-"))
        self.unedited = UneditedTexts()
        self.batcher = (GenerationBatcher(backbone, self.limits.batch_window_ms, self.limits.batch_max_rows,
                                          max_extra_pad=self.limits.batch_max_extra_pad)
                        if self.limits.batch_window_ms is not None else None)

    def _batching(self) -> contextlib.AbstractContextManager:
        """Around a request's model calls: its generations go through the batcher, if any."""
        return self.batcher.client() if self.batcher is not None else contextlib.nullcontext()

    @property
    def model_id(self) -> str:
        return self.backbone.model_id

    def comparisons(self) -> list[tuple[str, Editor]]:
        """The comparison editors shown, by slot, in page order."""
        editors = {BASELINE: self.baseline, ROME: self.rome}
        return [(slot, editors[slot]) for slot in SLOTS if editors[slot] is not None]

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
                              limits.probe_answer_tokens, texts=texts, cache=cache,
                              plain_alone=editor is self.editor)  # the Playground shows its edits
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
                  kind: str | None = None, update: Callable[[HistoryEntry, EditReport, Compared, tuple[str, ...]],
                                                          None] | None = None,
                  ) -> tuple[HistoryEntry, EditReport, Compared]:
        """Edit with InstructEdit and every comparison editor on top of ``prior``; the session is
        not changed here.

        With ``texts`` (a new edit, not an import) the blast radius is probed too (``kind``: the
        kind of subject chosen by the user, or guessed), and every continuation InstructEdit's
        and the baseline's reports show, before and after their edits, is generated in one call
        (:meth:`_generate_shown`; ROME, slower to edit, follows with its own). ``update`` gets each
        step's result as soon as it is ready (entry, InstructEdit's report, the comparisons done,
        the parts still pending): InstructEdit's first look (the prompt as typed), its whole
        report with the blast radius, then each comparison editor's but the last, whose result
        is the return value.
        """
        comparisons = self.comparisons()
        slots = tuple(slot for slot, _ in comparisons)
        share = span / (1 + len(comparisons))
        progress(start, "InstructEdit: computing the edit")
        active = [e.edit for e in prior]
        with user_errors():
            edit = self.editor.edit(request, active=active)
        before = [e.patch for e in active]
        if texts and update is not None:
            progress(start + 0.2 * share, "InstructEdit: reading the prompt before and after the edit")
            quick = measure_first_look(self.backbone, edit, before, self.limits.max_new_tokens, cache=cache)
            update(HistoryEntry(edit, quick.scores), quick, {}, (INSTRUCTEDIT, *slots))
        plan = self.blast.plan(request, kind) if texts else None  # once the request is known valid
        made: dict[str, tuple[Edit | None, str | None]] = {}
        if texts:
            for slot, editor in comparisons:
                if slot != ROME:
                    progress(start + 0.3 * share, f"{SLOT_INFO[slot].label}: {SLOT_INFO[slot].computing}")
                    made[slot] = self._compare_edit(slot, editor, request, prior)
            progress(start + 0.4 * share, "Continuing every prompt before and after the edits, probing the "
                                          "blast radius")
            self._generate_shown(edit, before, made, prior, plan, cache)
        progress(start + 0.5 * share, "InstructEdit: measuring before and after, probing the blast radius")
        report = self._measure(self.editor, edit, before, plan, texts=texts, cache=cache)
        entry = HistoryEntry(edit, report.scores, blast=report.blast)
        compared: Compared = {}
        for n, (slot, editor) in enumerate(comparisons):
            if update is not None:
                update(entry, report, dict(compared), slots[n:])
            other, other_report, error = self._compare(slot, editor, request, prior, plan, texts=texts,
                                                       cache=cache, progress=progress,
                                                       at=start + (n + 1) * share, span=share,
                                                       made=made.get(slot))
            entry.set_compared(slot, other, other_report.scores if other_report else None)
            compared[slot] = (other_report, error)
        return entry, report, compared

    def _generate_shown(self, edit: Edit, before: Sequence[Patch], made: dict[str, tuple[Edit | None, str | None]],
                        prior: Sequence[HistoryEntry], plan: BlastPlan | None, cache: GenerationCache) -> None:
        """Generate, in one call, every continuation the reports of InstructEdit's ``edit`` and of
        the comparison edits ``made`` show before and after (their probes in full, the blast radius
        to its first sentences); the measures then read them from ``cache``. InstructEdit's prompt
        as typed is left to its own call (the Playground's text, see :func:`measure_edit`)."""
        editors = dict(self.comparisons())
        plain = edit.request.prompt.strip()
        items = [(self.editor, edit, list(before))]
        for slot, (other, _) in made.items():
            if other is not None:
                own = [e.patch for e in (entry.compared(slot)[0] for entry in prior) if e is not None]
                items.append((editors[slot], other, own))
        blast = [p.prompt for p in plan.probes] if plan is not None else []
        jobs: list[tuple] = []
        for editor, one, stack in items:
            shown = [p.prompt for p in edit_probes(one, editor.use_instructions)
                     if editor is not self.editor or p.prompt != plain]
            for patches in (stack, [*stack, one.patch]):
                jobs += [(patches, shown, False), (patches, blast, True)]
        generate_jobs(self.backbone, [job for job in jobs if job[1]], self.limits.max_new_tokens, cache)

    def _compare_edit(self, slot: str, editor: Editor, request: EditRequest, prior: Sequence[HistoryEntry],
                      ) -> tuple[Edit | None, str | None]:
        """A comparison editor's edit on top of its own earlier edits in ``prior``, or ``None`` and
        the sentence saying why it could not edit (never raises: the InstructEdit edit stands
        whatever a comparison editor does)."""
        info = SLOT_INFO[slot]
        active = [e for e in (entry.compared(slot)[0] for entry in prior) if e is not None]
        try:
            problem = rome_subject_problem(request) if slot == ROME else None
            if problem:
                raise UserError(problem)
            with user_errors(info.failed):
                return editor.edit(request, active=active), None
        except UserError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a comparison's bug must not undo InstructEdit's edit
            return None, self._comparison_failed(info.label, exc)

    @staticmethod
    def _comparison_failed(label: str, exc: Exception) -> str:
        log.error("the %s editor failed", label, exc_info=exc)
        return (f"The {label} editor failed on the server ({type(exc).__name__}); it was logged. "
                "InstructEdit's edit is not affected.")

    def _compare(self, slot: str, editor: Editor, request: EditRequest, prior: Sequence[HistoryEntry],
                 plan: BlastPlan | None, *, texts: bool, cache: GenerationCache, progress: Progress,
                 at: float, span: float, made: tuple[Edit | None, str | None] | None = None,
                 ) -> tuple[Edit | None, EditReport | None, str | None]:
        """One comparison editor's edit (``made``: already computed) and its report; or ``None``,
        ``None`` and the sentence saying why it failed (never raises)."""
        info = SLOT_INFO[slot]
        active = [e for e in (entry.compared(slot)[0] for entry in prior) if e is not None]
        if made is None:
            progress(at, f"{info.label}: {info.computing}")
            made = self._compare_edit(slot, editor, request, prior)
        edit, error = made
        if edit is None:
            return None, None, error
        progress(at + 0.5 * span, f"{info.label}: measuring before and after, probing the blast radius")
        try:
            report = self._measure(editor, edit, [e.patch for e in active], plan, texts=texts, cache=cache)
        except UserError as exc:
            return None, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a comparison's bug must not undo InstructEdit's edit
            return None, None, self._comparison_failed(info.label, exc)
        return edit, report, None

    def edit(self, session_id: str, request: EditRequest, progress: Progress | None = None,
             kind: str | None = None, on_update: Callable[[EditOutcome], None] | None = None,
             ) -> EditOutcome:
        """Apply ``request`` on top of the session's edits; returns reports before/after.

        ``kind``: the kind of the edit's subject for its blast radius (None or "auto": guessed).
        ``on_update``: called (in this thread) with each partial result as soon as it is measured
        (its ``pending`` names what is still computing): InstructEdit's first look at the prompt
        as typed, then its whole report with the blast radius, then each comparison editor's.
        The returned outcome is the whole result.
        """
        progress = progress or _no_progress
        start = time.perf_counter()
        self.check_request(request)
        self.check_total(1)  # before the session is opened: a refused request creates no session
        with self.store.open(session_id) as session:
            self.store.check_room(session)
            self.check_total(1)

            def update(entry: HistoryEntry, report: EditReport, compared: Compared,
                       pending: tuple[str, ...]) -> None:
                if on_update is not None:
                    (base_report, base_error), (rome_report, rome_error) = (
                        compared.get(s, (None, None)) for s in SLOTS)
                    on_update(EditOutcome(entry, report, base_report, base_error, [*session.entries, entry],
                                          (time.perf_counter() - start) * 1000, rome_report, rome_error,
                                          pending=pending))

            cache = GenerationCache(self.unedited)
            if session.entries:  # read ahead (see read_ahead) under exactly these edits?
                n, plain = self.limits.max_new_tokens, request.prompt.strip()
                known = session.recall_text(_edit_ids(session.entries), n, plain)
                if known is not None:
                    cache.add([e.edit.patch for e in session.entries], n, plain, known)
            with self._batching():
                entry, report, compared = self._edit_one(request, session.entries, texts=True,
                                                         cache=cache,
                                                         progress=progress, kind=kind,
                                                         update=update if on_update is not None else None)
            session.entries.append(entry)
            history = list(session.entries)
        total = (time.perf_counter() - start) * 1000
        log.info("session %s: edit %s in %.0f ms (%d active)", session_id[:8], entry.id, total, len(history))
        (base_report, base_error), (rome_report, rome_error) = (compared.get(s, (None, None)) for s in SLOTS)
        return EditOutcome(entry, report, base_report, base_error, history, total, rome_report, rome_error)

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
        """Forget the session (its tab was closed) and its heatmaps."""
        self.store.drop(session_id)
        shutil.rmtree(self.trace_dir / _folder_name(session_id), ignore_errors=True)

    # ----- export / import ------------------------------------------------------------------
    def export(self, session_id: str) -> dict:
        """The session's history as a JSON-able document."""
        baseline = self.baseline.name if self.baseline is not None else None
        rome = self.rome.name if self.rome is not None else None
        return export_payload(self.history(session_id), self.model_id, self.editor.name, baseline, rome)

    def export_file(self, session_id: str) -> Path:
        """Write the session's history to a new JSON file (atomically) and return its path."""
        payload = self.export(session_id)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        folder = self.export_dir / _folder_name(session_id)
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
            with self._batching():
                entries = self._recompute(items, progress)
            session.entries[:] = entries
            log.info("session %s: imported %d edits", session_id[:8], len(entries))
            return list(entries)

    def _recompute(self, items: Sequence[ImportedEdit], progress: Progress) -> list[HistoryEntry]:
        entries: list[HistoryEntry] = []
        cache = GenerationCache(self.unedited)
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
        entries = self.history(session_id)
        patches = [e.edit.patch for e in entries]
        with self._batching():
            without = generate_under(self.backbone, [], [prompt], n, GenerationCache(self.unedited))[prompt]
            with_edits = generate_under(self.backbone, patches, [prompt], n)[prompt] if patches else without
        if patches:  # the "before" of this session's next edit of this prompt
            self.store.remember_text(session_id, _edit_ids(entries), n, prompt, with_edits)
        return without, with_edits

    def read_ahead(self, session_id: str, prompt: str) -> str:
        """What the model, with the session's edits, now says to ``prompt`` (as the Playground
        shows it); kept, so an edit of this prompt clicked next starts with its "before" known.
        The studio calls it when a prompt is chosen or typed, before the click."""
        return self.generate(session_id, prompt)[1]

    # ----- where is this fact? ---------------------------------------------------------------
    def trace(self, session_id: str, prompt: str, subject: str) -> TraceView:
        """Causal tracing of ``prompt`` about ``subject`` on the unedited model: the heatmap (a PNG
        in the session's folder) and its one-line reading (see :mod:`.tracing_view`).

        Refuses an empty prompt, a missing subject or one not in the prompt with a sentence.
        """
        prompt = (prompt or "").strip()
        subject = " ".join((subject or "").split())
        if not prompt:
            raise UserError("The prompt is empty: type the sentence whose fact you want to locate.")
        for name, value in (("prompt", prompt), ("subject", subject)):
            check_text(name, value)
            if len(value) > self.limits.max_input_chars:
                raise UserError(f"The {name} is {len(value)} characters long; the limit is "
                                f"{self.limits.max_input_chars}.")
        if not subject:
            raise UserError("Type the subject (the words of the prompt the fact is about, e.g. Eiffel "
                            "Tower): tracing adds noise to the subject's words.")
        if find_subject(prompt, subject) < 0:
            raise UserError(f"The subject {subject!r} does not occur in the prompt: type it as it appears "
                            "there (tracing adds noise to the subject's words).")
        edits = len(self.history(session_id))
        with user_errors("causal tracing failed: "):
            view = run_trace(self.backbone, prompt, subject, self.trace_dir / _folder_name(session_id),
                             active_edits=edits)
        log.info("session %s: traced %r about %r in %.1f s", session_id[:8], prompt[:40], subject,
                 view.seconds)
        return view

    def stats(self) -> dict:
        return self.store.stats()


__all__ = ["EditService", "EditOutcome", "TraceView", "UserError", "Session", "user_errors"]
