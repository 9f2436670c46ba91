"""Atomic writes: a file or folder is either the old one or the complete new one, never half-written.

Everything is written beside its destination (same folder, so the final rename stays on one file
system) under a hidden temporary name, then renamed into place with :func:`os.replace`. When
writing fails (or is interrupted, ``KeyboardInterrupt`` included) the temporary is removed and the
destination is left as it was.

- :func:`atomic_file` / :func:`atomic_replace`: a file written by your own code (``writer(tmp)``).
- :func:`atomic_write_bytes` / :func:`atomic_write_text`: a file from bytes or text.
- :func:`atomic_folder`: a folder filled by your code, swapped in as a whole.

:func:`sha256_file` is the checksum the writers and readers of these files record and compare.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o644
FOLDER_MODE = 0o755


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _discard(path: str | Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_file(path: str | Path, *, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    The temporary file exists (empty) when the block starts; the block writes it completely. If
    the block raises, nothing at ``path`` changes and the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp makes a private (0600) file; the result is a normal file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_replace(path: str | Path, writer: Callable[[Path], object], *, mode: int = FILE_MODE) -> Path:
    """Write ``path`` atomically with ``writer(tmp_path)``, which must write the whole file."""
    with atomic_file(path, mode=mode) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = FILE_MODE) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_replace(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8", mode: int = FILE_MODE) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)


def replace_folder(src: str | Path, dst: str | Path) -> None:
    """Put the folder ``src`` at ``dst``, replacing what is there (each step a rename).

    An existing ``dst`` is first renamed aside, then ``src`` is renamed into place, then the old
    one is deleted; ``dst`` never holds a mixture of the two.
    """
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        _discard(old)
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None and not dst.exists():
            os.replace(old, dst)  # put the previous folder back
        raise
    if old is not None:
        _discard(old)


@contextmanager
def atomic_folder(path: str | Path, *, mode: int = FOLDER_MODE) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; swap it in as ``path`` when the block succeeds.

    If the block raises, ``path`` is untouched and the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        work.chmod(mode)  # mkdtemp makes a private (0700) folder; the result is a normal folder
        yield work
        replace_folder(work, path)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


__all__ = ["atomic_file", "atomic_folder", "atomic_replace", "atomic_write_bytes", "atomic_write_text",
           "replace_folder", "sha256_file"]
