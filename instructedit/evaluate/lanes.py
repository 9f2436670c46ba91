"""Claims that let several processes (lanes) of one ``results`` run share its cache folder: each
evaluation is run by the lane that claims it first, the others read its cached summary.

A claim is a file beside the evaluation's cache file, created atomically (``O_EXCL``) and holding
the claiming process's id; it is removed when the evaluation is cached or fails. A claim whose
process is gone (killed, crashed) is stale and is taken over, so an interrupted run resumes.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0


def claim_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".claim")


def _owner(claim: Path) -> int | None:
    try:
        return int(claim.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # Linux: the state after the command's closing parenthesis; Z is a zombie
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def try_claim(cache: Path) -> bool:
    """Claim the evaluation cached at ``cache`` for this process; False if another live one holds it.

    A claim left by a process that no longer runs is removed and taken.
    """
    claim = claim_path(cache)
    claim.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(claim)
            if owner == os.getpid():
                return True
            if owner is not None and _alive(owner):
                return False
            if owner is None and time.time() - _mtime(claim) < 10 * POLL_SECONDS:
                return False  # being written right now
            log.warning("taking over a stale claim on %s (process %s is gone)", cache.name, owner)
            claim.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return True
    return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def release(cache: Path) -> None:
    """Drop this process's claim on ``cache`` (after caching it, or when it failed)."""
    claim = claim_path(cache)
    if _owner(claim) == os.getpid():
        claim.unlink(missing_ok=True)


def wait_for(cache: Path, poll: float = POLL_SECONDS) -> bool:
    """Wait until another lane has cached ``cache`` (True) or left it unclaimed without caching it
    (False: it failed or died, and the caller runs it itself)."""
    while True:
        if cache.is_file():
            return True
        if try_claim(cache):
            if cache.is_file():   # cached between the two checks
                release(cache)
                return True
            return False
        time.sleep(poll)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
