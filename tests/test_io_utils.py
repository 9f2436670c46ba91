"""The atomic-write helpers (instructedit/io_utils.py) and the logging set-up (instructedit/logs.py)."""
from __future__ import annotations

import logging
import stat

import pytest

from instructedit.io_utils import atomic_folder, atomic_replace, atomic_write_text, sha256_file
from instructedit.logs import ML_LIBRARIES, WEB_LIBRARIES, setup_logging, verbosity_level


def test_atomic_write_replaces_whole_files_with_normal_permissions(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.json", "old\n")
    assert path.read_text() == "old\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in path.parent.iterdir()] == ["a.json"]
    assert sha256_file(path) == "7aa7a5359173d05b63cfd682e3c38487f3cb4f7f1d60659fe59fab1505977d4c"


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = atomic_write_text(tmp_path / "a.json", "old\n")

    def half_then_fail(tmp):
        tmp.write_text("ne")
        raise error

    with pytest.raises(type(error)):
        atomic_replace(path, half_then_fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_folder_swaps_in_a_complete_folder_or_nothing(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target) as work:
        (work / "weights").write_text("1")
    assert (target / "weights").read_text() == "1" and stat.S_IMODE(target.stat().st_mode) == 0o755
    with pytest.raises(RuntimeError), atomic_folder(target) as work:
        (work / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "1"
    with atomic_folder(target) as work:
        (work / "other").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["other"]  # replaced as a whole
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old folder left


def test_verbosity_levels_and_library_loggers():
    assert verbosity_level(0) == logging.WARNING and verbosity_level(1) == logging.INFO
    assert verbosity_level(2) == logging.DEBUG and verbosity_level(0, logging.INFO) == logging.INFO
    setup_logging(0)
    assert all(logging.getLogger(n).level == logging.ERROR for n in ML_LIBRARIES)
    assert all(logging.getLogger(n).level == logging.WARNING for n in WEB_LIBRARIES)
    setup_logging(2)
    assert all(logging.getLogger(n).level == logging.NOTSET for n in (*ML_LIBRARIES, *WEB_LIBRARIES))
    setup_logging(0)
