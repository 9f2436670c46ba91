"""Per-session state, kept apart from the UI: a thread-safe dict keyed by session id.

The shared base model and editors are frozen; everything a user changes (their stack of edits)
lives in a :class:`Session`. Sessions are created on first use, locked while one of their
requests runs (so a session's own requests apply in order), capped in size, dropped when the
browser tab closes (``demo.unload``) and swept after an idle timeout.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

log = logging.getLogger(__name__)


TEXTS_KEPT = 32


@dataclass
class Session:
    """One user's state: the active edits (oldest first), when the session was used, and the
    continuations its edited model gave lately (``texts``: keyed by the ids of the edits that were
    active, the length and the prompt, so an entry never outlives the edits it was made under)."""

    id: str
    created: float
    last_used: float
    entries: list[Any] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    texts: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)

    def remember_text(self, edit_ids: tuple[str, ...], max_new_tokens: int, prompt: str, text: str) -> None:
        """Keep what the model said to ``prompt`` under the edits ``edit_ids`` (the latest few)."""
        self.texts[(edit_ids, max_new_tokens, prompt)] = text
        self.texts.move_to_end((edit_ids, max_new_tokens, prompt))
        while len(self.texts) > TEXTS_KEPT:
            self.texts.popitem(last=False)

    def recall_text(self, edit_ids: tuple[str, ...], max_new_tokens: int, prompt: str) -> str | None:
        """What :meth:`remember_text` kept for exactly these edits, or None."""
        return self.texts.get((edit_ids, max_new_tokens, prompt))


class SessionStore:
    """A thread-safe ``session id -> Session`` map with an edit cap and an idle timeout.

    Args:
        max_edits: most active edits one session may hold.
        idle_timeout_s: sessions unused for longer are dropped by :meth:`sweep`.
        max_sessions: most sessions held at once (a new one beyond it is refused).
        sweep_every_s: :meth:`open` sweeps idle sessions at most this often.
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(self, max_edits: int, idle_timeout_s: float = 3600.0, max_sessions: int = 500,
                 sweep_every_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        if max_edits < 1 or max_sessions < 1:
            raise ValueError("max_edits and max_sessions must be at least 1")
        self.max_edits = max_edits
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self.sweep_every_s = sweep_every_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def _get_or_create(self, session_id: str) -> Session:
        if not isinstance(session_id, str) or not session_id:
            raise UserError("This request has no session; reload the page.")
        now = self._clock()
        if now - self._last_sweep >= self.sweep_every_s:
            self.sweep(now)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                if len(self._sessions) >= self.max_sessions:
                    raise UserError(f"The server already holds {self.max_sessions} sessions; "
                                    "try again in a few minutes.")
                session = Session(session_id, now, now)
                self._sessions[session_id] = session
                log.info("session %s created (%d active)", session_id[:8], len(self._sessions))
            session.last_used = now
            return session

    @contextlib.contextmanager
    def open(self, session_id: str) -> Iterator[Session]:
        """The session (created if new), locked for the ``with`` body and marked as used."""
        session = self._get_or_create(session_id)
        with session.lock:
            try:
                yield session
            finally:
                session.last_used = self._clock()

    def entries(self, session_id: str) -> list[Any]:
        """A copy of the session's entries (empty for an unknown session; creates nothing)."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            return []
        with session.lock:
            return list(session.entries)

    def remember_text(self, session_id: str, edit_ids: tuple[str, ...], max_new_tokens: int,
                      prompt: str, text: str) -> None:
        """:meth:`Session.remember_text` on an existing session (an unknown one is not created)."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is not None:
            with session.lock:
                session.remember_text(edit_ids, max_new_tokens, prompt, text)

    def check_room(self, session: Session, extra: int = 1) -> None:
        """Raise :class:`UserError` unless ``extra`` more edits fit in ``session``."""
        if len(session.entries) + extra > self.max_edits:
            raise UserError(f"This session already has {len(session.entries)} active edits; the "
                            f"limit is {self.max_edits}. Undo or remove some edits first.")

    def drop(self, session_id: str) -> bool:
        """Forget a session (tab closed); True if it existed."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            log.info("session %s closed (%d edits dropped)", session_id[:8], len(session.entries))
        return session is not None

    def sweep(self, now: float | None = None) -> int:
        """Drop sessions idle for longer than the timeout (skipping busy ones); returns how many."""
        now = self._clock() if now is None else now
        self._last_sweep = now
        with self._lock:
            stale = [s for s in self._sessions.values() if now - s.last_used > self.idle_timeout_s]
        dropped = 0
        for session in stale:
            if not session.lock.acquire(blocking=False):
                continue  # a request of this session is running right now
            try:
                with self._lock:
                    if self._sessions.get(session.id) is session:
                        del self._sessions[session.id]
                        dropped += 1
            finally:
                session.lock.release()
        if dropped:
            log.info("dropped %d idle session(s)", dropped)
        return dropped

    def stats(self) -> dict[str, int]:
        """Number of sessions and of active edits over all of them."""
        with self._lock:
            sessions = list(self._sessions.values())
        return {"sessions": len(sessions), "edits": sum(len(s.entries) for s in sessions)}
