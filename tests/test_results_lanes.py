"""Claims through which several processes (lanes) of one ``results`` run share its evaluations:
held by one process, stale claims taken over, waiting for another lane (the two-lane run itself:
tests/test_evaluate_results.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from instructedit.evaluate import lanes


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_claim_is_held_by_one_process(tmp_path):
    cache = tmp_path / "cache" / "abc.json"
    assert lanes.try_claim(cache)
    assert lanes.claim_path(cache).read_text().split()[0] == str(os.getpid())
    assert lanes.try_claim(cache)                      # its own claim: still its own
    lanes.claim_path(cache).write_text("1\n")           # pid 1 runs: another live process holds it
    assert not lanes.try_claim(cache)
    lanes.release(cache)                                # not ours: left alone
    assert lanes.claim_path(cache).is_file()


def test_a_stale_claim_is_taken_over(tmp_path):
    cache = tmp_path / "abc.json"
    lanes.claim_path(cache).write_text(f"{_dead_pid()}\n")
    assert lanes.try_claim(cache)
    assert lanes.claim_path(cache).read_text().split()[0] == str(os.getpid())
    lanes.release(cache)
    assert not lanes.claim_path(cache).exists()


def test_a_claim_of_an_exited_unreaped_process_is_stale(tmp_path):
    """A lane killed while its parent lives on is a zombie until reaped: its claim is stale."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 60
    while time.time() < deadline and lanes._alive(zombie.pid):
        time.sleep(0.05)
    assert not lanes._alive(zombie.pid) and zombie.poll() == 0   # exited; poll() reaps it only now
    cache = tmp_path / "abc.json"
    lanes.claim_path(cache).write_text(f"{zombie.pid}\n")
    assert lanes.try_claim(cache)


def test_wait_for_returns_when_the_other_lane_caches_or_gives_up(tmp_path):
    cache = tmp_path / "abc.json"
    lanes.claim_path(cache).write_text("1\n")           # held by a live process

    def finish():
        time.sleep(0.3)
        lanes.write_atomically(cache, "{}")

    writer = threading.Thread(target=finish)
    writer.start()
    assert lanes.wait_for(cache, poll=0.05) is True
    writer.join()
    other = tmp_path / "def.json"
    lanes.claim_path(other).write_text("1\n")

    def give_up():
        time.sleep(0.3)
        lanes.claim_path(other).unlink()

    quitter = threading.Thread(target=give_up)
    quitter.start()
    assert lanes.wait_for(other, poll=0.05) is False    # nobody cached it: the caller now holds it
    quitter.join()
    assert lanes.claim_path(other).read_text().split()[0] == str(os.getpid())


def test_write_atomically_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "x" / "y.json"
    lanes.write_atomically(target, '{"a": 1}')
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["y.json"]


def test_a_lane_ends_when_the_run_that_started_it_is_gone(tmp_path):
    """A lane whose parent died (a killed results run) stops instead of running on unseen."""
    pid_file = tmp_path / "lane.pid"
    (tmp_path / "lane.py").write_text(
        "import os, pathlib, sys\n"
        "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\n"
        "from instructedit.evaluate.results import _exit_with_parent\n"
        "_exit_with_parent(os.getppid(), poll=0.05)\n")
    (tmp_path / "run.py").write_text(
        "import os, pathlib, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])\n"
        "while not pathlib.Path(sys.argv[2]).exists():\n"
        "    time.sleep(0.05)\n"
        "os._exit(0)\n")
    subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "lane.py"), str(pid_file)],
                   check=True, timeout=120)
    lane = int(pid_file.read_text())
    deadline = time.time() + 60
    while time.time() < deadline and lanes._alive(lane):
        time.sleep(0.1)
    assert not lanes._alive(lane)
