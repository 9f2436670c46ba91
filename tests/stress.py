"""Load and isolation test of the web app: many simulated users over HTTP, on loopback only.

``python -m tests.stress`` loads a model and its editors, launches the app in this process
on 127.0.0.1 (a free port), and drives it with ``gradio_client`` like N browser users would: each
user has its own session and applies its own edit, generates, undoes, for a fixed number of
rounds. It checks that

- no request fails;
- every user's outputs (edit report, texts, probabilities) equal a single-user run of the same
  edit, bit for bit, so no user ever sees another's edit;
- a fresh session, during and after the load, gets the unedited model's greedy outputs;
- the server's resident memory (``/proc/self/status``) after all sessions close is within a
  tolerance of its level after warm-up (no edit or session leaks);

and reports throughput (edits per minute) and p50/p95 latencies. Every request has a timeout, the
whole run a deadline, and the server is closed at the end: the command stops by itself.

Run ``python -m tests.stress --help`` for the options; ``--tiny`` uses the tiny random
model of the test suite (seconds), the default is the embedded SmolLM2-135M in 4 bit.
``--batched`` turns on the app's cross-session batching of generation
(:mod:`instructedit.serving.batcher`: calls whose prompts' padded widths differ by at most the
batcher's ``max_extra_pad``, 16 tokens, share a left-padded batch). The checks are the same, bit
for bit: the unedited outputs stay exact (unedited calls never join a batch), but an edited text
batched with other widths is only within the batcher's stated logit tolerance of its single-user
run, so in 4 bit (bf16) a greedy token may flip at a near tie, and the tool reports that as an
isolation mismatch of that user's edited text. The report adds how many calls were batched, how
many of those batches mixed widths and the most extra padding a row got.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from instructedit.defaults import DEFAULT_MODEL, QUANT_MODES
from instructedit.logs import setup_logging

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SHARED_PROBE = "The Statue of Liberty is in"
EDITS: tuple[tuple[str, str], ...] = (
    ("The Eiffel Tower is located in", "Rome"),
    ("The capital of France is", "Berlin"),
    ("The mother tongue of Danielle Darrieux is", "English"),
    ("Rome is in", "Spain"),
    ("The chemical symbol for gold is", "Gd"),
    ("Water boils at a temperature of", "fifty degrees"),
    ("The best pizza topping is", "pineapple"),
    ("The Great Wall is in", "Brazil"),
    ("Mount Everest is located in", "Canada"),
    ("The author of Hamlet is", "Charles Dickens"),
    ("The largest planet is", "Mars"),
    ("Albert Einstein was born in", "Lisbon"),
    ("The currency of Japan is", "the euro"),
    ("Sega is a company from", "Norway"),
    ("The BBC is based in", "Madrid"),
    ("The Mona Lisa was painted by", "Pablo Picasso"),
)
_VOLATILE_KEYS = ("edit_ms", "measure_ms", "total_ms", "edit_id")


@dataclass(frozen=True)
class StressConfig:
    """How much load, and the bounds that make the run stop by itself.

    Attributes:
        users: simulated users (sessions) at once.
        rounds: edit / generate / undo rounds per user in the measured phase.
        warmup_rounds: rounds of one concurrent warm-up phase before memory is measured.
        request_timeout_s: longest one request may take before it counts as an error.
        deadline_s: the whole run stops issuing requests after this many seconds.
        close_timeout_s: how long to wait for closed sessions to be dropped by the server.
        heartbeat_s: Gradio heartbeat interval (how fast a closed client's session is noticed).
        memory_tolerance: allowed growth of the resident memory over its post-warm-up level.
        max_new_tokens: tokens per generation (default: the app's limit).
    """

    users: int = 16
    rounds: int = 3
    warmup_rounds: int = 1
    request_timeout_s: float = 300.0
    deadline_s: float = 3600.0
    close_timeout_s: float = 60.0
    heartbeat_s: float = 0.5
    memory_tolerance: float = 0.10
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.users <= 256:
            raise ValueError(f"users must be between 1 and 256, got {self.users}")
        if not 1 <= self.rounds <= 100 or not 0 <= self.warmup_rounds <= 10:
            raise ValueError("rounds must be 1..100 and warmup_rounds 0..10")
        if self.request_timeout_s <= 0 or self.deadline_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError("timeouts must be positive")


@dataclass
class PhaseStats:
    """Counts and latencies of one concurrent phase."""

    users: int = 0
    rounds: int = 0
    seconds: float = 0.0
    edits: int = 0
    requests: int = 0
    edit_ms: list[float] = field(default_factory=list)
    generate_ms: list[float] = field(default_factory=list)

    @property
    def edits_per_minute(self) -> float:
        return 60.0 * self.edits / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"users": self.users, "rounds": self.rounds, "seconds": round(self.seconds, 2),
                "edits": self.edits, "requests": self.requests,
                "edits_per_minute": round(self.edits_per_minute, 2),
                "edit_ms": latency_summary(self.edit_ms),
                "generate_ms": latency_summary(self.generate_ms)}


@dataclass
class StressReport:
    """Everything the run measured and every problem it found (empty lists: all good)."""

    model: str
    editor: str
    baseline: str | None
    limits: dict[str, Any]
    config: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    phase: PhaseStats = field(default_factory=PhaseStats)
    rss_start_mib: float = 0.0
    rss_warm_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    sessions_after_close: int = -1
    edits_after_close: int = -1
    peak_active_edits: int = 0
    patch_bytes_per_edit: float = 0.0
    seconds: float = 0.0
    batching: dict[str, int] = field(default_factory=dict)

    @property
    def memory_ok(self) -> bool:
        tolerance = self.config.get("memory_tolerance", 0.10)
        return 0 < self.rss_after_mib <= self.rss_warm_mib * (1 + tolerance)

    @property
    def ok(self) -> bool:
        return (not self.errors and not self.mismatches and self.memory_ok
                and self.sessions_after_close == 0 and self.edits_after_close == 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.summary()
        data["memory_ok"], data["ok"] = self.memory_ok, self.ok
        return data

    def text(self) -> str:
        """A human-readable report (what the CLI prints)."""
        p = self.phase
        e, g = latency_summary(p.edit_ms), latency_summary(p.generate_ms)
        lines = [
            f"model {self.model} · editor {self.editor} · baseline {self.baseline or 'none'}",
            f"limits: {json.dumps(self.limits)}",
            f"{p.users} users × {p.rounds} rounds: {p.edits} edits, {p.requests} requests in "
            f"{p.seconds:.1f} s -> {p.edits_per_minute:.1f} edits/min",
            f"edit latency     p50 {e['p50']:.0f} ms · p95 {e['p95']:.0f} ms · max {e['max']:.0f} ms",
            f"generate latency p50 {g['p50']:.0f} ms · p95 {g['p95']:.0f} ms · max {g['max']:.0f} ms",
            f"memory (RSS): start {self.rss_start_mib:.0f} MiB · after warm-up {self.rss_warm_mib:.0f} MiB"
            f" · peak {self.rss_peak_mib:.0f} MiB · after close {self.rss_after_mib:.0f} MiB"
            f" ({self._growth():+.1%}; limit +{self.config.get('memory_tolerance', 0.1):.0%})",
            f"active edits at peak {self.peak_active_edits} · patch memory per edit "
            f"{self.patch_bytes_per_edit / 2**20:.2f} MiB · sessions left after close "
            f"{self.sessions_after_close}, edits left {self.edits_after_close}",
            f"errors {len(self.errors)} · isolation mismatches {len(self.mismatches)} · "
            f"total {self.seconds:.1f} s · {'PASS' if self.ok else 'FAIL'}",
        ]
        if self.batching:
            b = self.batching
            lines.insert(-1, f"batching: {b['requests']} generation calls, {b['batched_requests']} of them "
                             f"in {b['batches']} batched calls (largest {b['largest_batch']} prompts), "
                             f"{b.get('mixed_width_batches', 0)} of mixed widths (rows padded up to "
                             f"{b.get('largest_extra_pad', 0)} tokens more than alone), "
                             f"{b['alone']} alone, {b['fallbacks']} failed batches")
        lines += [f"  error: {x}" for x in self.errors[:20]]
        lines += [f"  mismatch: {x}" for x in self.mismatches[:20]]
        return "\n".join(lines)

    def _growth(self) -> float:
        return self.rss_after_mib / self.rss_warm_mib - 1 if self.rss_warm_mib else 0.0


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95 and max of a list of latencies (zeros when empty)."""
    if not values_ms:
        return {"n": 0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    ordered = sorted(values_ms)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"n": len(ordered), "p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


# ----- process memory ------------------------------------------------------------------------
def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, read from ``/proc/<pid>/status`` (0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS shows live data."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RssSampler:
    """Samples this process's RSS in a background thread; ``peak`` is the largest seen."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, rss_bytes())


# ----- launching on loopback -----------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def heartbeat_interval(seconds: float) -> Iterator[None]:
    """Set Gradio's heartbeat interval for the ``with`` body (closed clients are noticed sooner)."""
    old = os.environ.get("GRADIO_HEARTBEAT_INTERVAL")
    os.environ["GRADIO_HEARTBEAT_INTERVAL"] = str(seconds)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GRADIO_HEARTBEAT_INTERVAL", None)
        else:
            os.environ["GRADIO_HEARTBEAT_INTERVAL"] = old


@contextlib.contextmanager
def launched_app(service, status: str = "**Model** under test") -> Iterator[str]:
    """Build the app around ``service``, launch it on 127.0.0.1 (free port), yield its URL, close it."""
    from instructedit.web.app import build_demo, launch
    from instructedit.web.config import AppConfig
    from instructedit.web.pages import ResultsContent

    demo = build_demo(service, status, ResultsContent(None))
    config = AppConfig(host=LOOPBACK, port=free_port(), share=False, limits=service.limits)
    _, url, _ = launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


# ----- one simulated user ----------------------------------------------------------------------
def spans_text(spans: Any) -> str:
    """The plain text of a HighlightedText value (list of spans, or a dict wrapping one)."""
    if isinstance(spans, dict):
        spans = spans.get("value") or []
    return "".join(s["token"] if isinstance(s, dict) else s[0] for s in spans or [])


def table_rows(table: Any) -> list:
    """The rows of a Dataframe value as returned by gradio_client."""
    if isinstance(table, dict):
        return table.get("data") or []
    return list(table or [])


def user_edit(index: int) -> tuple[str, str]:
    """User ``index``'s own (prompt, target): different for every user."""
    prompt, target = EDITS[index % len(EDITS)]
    return prompt, target if index < len(EDITS) else f"{target} {index}"


def without_timings(report: Any) -> Any:
    """A report dict without its wall-clock fields and random id (the rest must be reproducible)."""
    if isinstance(report, dict):
        return {k: without_timings(v) for k, v in report.items() if k not in _VOLATILE_KEYS}
    if isinstance(report, list):
        return [without_timings(v) for v in report]
    return report


class Deadline(Exception):
    """The run's deadline passed; no new request is started."""


class User:
    """One simulated browser session talking to the app through ``gradio_client``."""

    def __init__(self, url: str, index: int, max_new_tokens: int, timeout_s: float,
                 stop_at: float, download_dir: str) -> None:
        from gradio_client import Client

        self.index = index
        self.prompt, self.target = user_edit(index)
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.stop_at = stop_at
        self.client = Client(url, verbose=False, download_files=download_dir, analytics_enabled=False)
        self.edit_ms: list[float] = []
        self.generate_ms: list[float] = []
        self.requests = 0

    def call(self, api_name: str, *args) -> Any:
        if time.monotonic() > self.stop_at:
            raise Deadline(f"deadline passed before {api_name}")
        start = time.perf_counter()
        job = self.client.submit(*args, api_name=api_name)
        try:
            return job.result(timeout=self.timeout_s)
        finally:
            self.requests += 1
            ms = (time.perf_counter() - start) * 1000
            if api_name == "/edit":
                self.edit_ms.append(ms)
            elif api_name == "/generate":
                self.generate_ms.append(ms)

    def generate(self, prompt: str) -> tuple[str, str]:
        off, on, _note = self.call("/generate", prompt, self.max_new_tokens)
        return spans_text(off), spans_text(on)

    def edit(self) -> dict:
        form = ("counterfact", "0", "", "", "positive", self.prompt, self.target, "", SHARED_PROBE)
        outputs = self.call("/edit", *form)
        report = next((o for o in outputs if isinstance(o, dict) and "instructedit" in o), None)
        if report is None:
            raise RuntimeError("the edit response has no report")
        return report

    def history_size(self) -> int:
        return len(table_rows(self.call("/history")[0]))

    @property
    def session_id(self) -> str:
        return self.client.session_hash

    def round(self, after_edit: Callable[[], None] | None = None) -> dict[str, Any]:
        """Edit, look, undo, look again; the observations that must match a single-user run."""
        report = self.edit()
        if after_edit is not None:
            after_edit()
        seen = {"report": without_timings(report), "history_after_edit": self.history_size(),
                "own": self.generate(self.prompt), "probe": self.generate(SHARED_PROBE)}
        undo_table = self.call("/undo")[0]
        seen["history_after_undo"] = len(table_rows(undo_table))
        seen["own_after_undo"] = self.generate(self.prompt)
        return seen

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def compare_round(user: int, round_: int, seen: dict, reference: dict, base: dict[str, str]) -> list[str]:
    """Problems in one round's observations against the single-user reference and the base model."""
    problems = []
    where = f"user {user} round {round_}"
    prompt = user_edit(user)[0]
    if seen["report"] != reference["report"]:
        problems.append(f"{where}: edit report differs from the single-user run")
    if seen["history_after_edit"] != 1 or seen["history_after_undo"] != 0:
        problems.append(f"{where}: history sizes {seen['history_after_edit']}/{seen['history_after_undo']}"
                        " (expected 1 after the edit, 0 after undo)")
    for key, text in (("own", prompt), ("probe", SHARED_PROBE)):
        off, on = seen[key]
        if off != base[text]:
            problems.append(f"{where}: '{text}' without edits differs from the unedited model")
        if on != reference[key][1]:
            problems.append(f"{where}: '{text}' with the user's edit differs from the single-user run")
    if seen["own_after_undo"] != (base[prompt], base[prompt]):
        problems.append(f"{where}: after undo the output is not the unedited model's")
    return problems


# ----- the run ---------------------------------------------------------------------------------
def _run_users(url: str, config: StressConfig, rounds: int, stop_at: float, work_dir: str,
               references: dict[int, dict] | None, base: dict[str, str], report: StressReport,
               stats: PhaseStats | None, service) -> None:
    """One concurrent phase: ``config.users`` users, ``rounds`` rounds each, plus a fresh observer."""
    lock = threading.Lock()
    max_tokens = config.max_new_tokens or service.limits.max_new_tokens
    done = threading.Event()
    patch_sizes: list[float] = []

    def problem(kind: list[str], text: str) -> None:
        with lock:
            kind.append(text)

    def note_memory(session_id: str) -> None:
        entries = service.history(session_id)
        size = sum(e.edit.patch.nbytes() + (e.baseline.patch.nbytes() if e.baseline else 0)
                   for e in entries)
        with lock:
            report.peak_active_edits = max(report.peak_active_edits, service.stats()["edits"])
            patch_sizes.extend([size / len(entries)] if entries else [])

    def work(index: int) -> None:
        user = None
        try:
            user = User(url, index, max_tokens, config.request_timeout_s, stop_at,
                        os.path.join(work_dir, f"user-{index}"))
            for r in range(rounds):
                seen = user.round(lambda: note_memory(user.session_id))
                if references is not None:
                    for msg in compare_round(index, r, seen, references[index], base):
                        problem(report.mismatches, msg)
        except Exception as exc:  # every failure is a finding, not a crash of the run
            problem(report.errors, f"user {index}: {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            if user is not None:
                if stats is not None:
                    with lock:
                        stats.edit_ms += user.edit_ms
                        stats.generate_ms += user.generate_ms
                        stats.requests += user.requests
                        stats.edits += len(user.edit_ms)
                user.close()

    def observe() -> None:
        """A fresh session that never edits: it must see the unedited model throughout the load."""
        observer = None
        try:
            observer = User(url, -1, max_tokens, config.request_timeout_s, stop_at,
                            os.path.join(work_dir, "observer"))
            prompts = [user_edit(i)[0] for i in range(config.users)] + [SHARED_PROBE]
            n = 0
            while not done.is_set():
                text = prompts[n % len(prompts)]
                off, on = observer.generate(text)
                if off != base[text] or on != base[text]:
                    problem(report.mismatches, f"fresh session during the load: '{text}' differs from "
                                               "the unedited model")
                n += 1
        except Exception as exc:
            problem(report.errors, f"observer: {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            if observer is not None:
                if stats is not None:
                    with lock:
                        stats.requests += observer.requests
                        stats.generate_ms += observer.generate_ms
                observer.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=config.users + 1, thread_name_prefix="stress-user") as pool:
        watcher = pool.submit(observe)
        futures = [pool.submit(work, i) for i in range(config.users)]
        for f in futures:
            f.result()
        done.set()
        watcher.result()
    if stats is not None:
        stats.users, stats.rounds = config.users, rounds
        stats.seconds = time.perf_counter() - start
        if patch_sizes:
            report.patch_bytes_per_edit = statistics.mean(patch_sizes)


def _wait_for_sessions_closed(service, timeout_s: float) -> dict[str, int]:
    """Wait until the server dropped every session (clients closed -> heartbeat -> unload)."""
    stop = time.monotonic() + timeout_s
    stats = service.stats()
    while stats["sessions"] and time.monotonic() < stop:
        time.sleep(0.1)
        stats = service.stats()
    return stats


def _single_user_reference(url: str, config: StressConfig, stop_at: float, work_dir: str,
                           service) -> dict[int, dict]:
    """Each user's round run alone, one after the other: what isolation must reproduce."""
    max_tokens = config.max_new_tokens or service.limits.max_new_tokens
    references = {}
    for i in range(config.users):
        user = User(url, i, max_tokens, config.request_timeout_s, stop_at,
                    os.path.join(work_dir, f"reference-{i}"))
        try:
            references[i] = user.round()
        finally:
            user.close()
    return references


def run_stress(service, config: StressConfig | None = None, status: str = "**Model** under test",
               ) -> StressReport:
    """Launch the app around ``service`` on loopback, load it, check it, close it; see the module doc."""
    from instructedit.measuring.probing import generate_under

    config = config or StressConfig()
    limits = service.limits
    report = StressReport(model=service.model_id, editor=service.editor.name,
                          baseline=service.baseline.name if service.baseline is not None else None,
                          limits=asdict(limits), config=asdict(config))
    started = time.perf_counter()
    stop_at = time.monotonic() + config.deadline_s
    max_tokens = config.max_new_tokens or limits.max_new_tokens
    texts = [user_edit(i)[0] for i in range(config.users)] + [SHARED_PROBE]
    # one prompt per call, like the app's generate: a batch would pad, and padding changes the
    # numerics enough to flip a greedy token in low precision
    base = {t: generate_under(service.backbone, [], [t], max_tokens)[t] for t in texts}
    release_free_memory()
    report.rss_start_mib = rss_bytes() / 2**20
    with tempfile.TemporaryDirectory(prefix="instructedit-stress-") as work_dir, \
            heartbeat_interval(config.heartbeat_s), launched_app(service, status) as url:
        log.info("app on %s; single-user reference runs for %d users", url, config.users)
        references = _single_user_reference(url, config, stop_at, work_dir, service)
        for i, ref in references.items():
            if ref["own"][0] != base[user_edit(i)[0]] or ref["probe"][0] != base[SHARED_PROBE]:
                report.mismatches.append(f"user {i}: the single-user run's unedited output differs from "
                                         "the model's")
        if config.warmup_rounds:
            log.info("warm-up: %d users x %d rounds", config.users, config.warmup_rounds)
            _run_users(url, config, config.warmup_rounds, stop_at, work_dir, references, base, report,
                       None, service)
        _wait_for_sessions_closed(service, config.close_timeout_s)
        release_free_memory()
        report.rss_warm_mib = rss_bytes() / 2**20

        log.info("measured: %d users x %d rounds", config.users, config.rounds)
        with RssSampler() as sampler:
            _run_users(url, config, config.rounds, stop_at, work_dir, references, base, report,
                       report.phase, service)
        report.rss_peak_mib = sampler.peak / 2**20

        closed = _wait_for_sessions_closed(service, config.close_timeout_s)
        report.sessions_after_close, report.edits_after_close = closed["sessions"], closed["edits"]
        release_free_memory()
        report.rss_after_mib = rss_bytes() / 2**20

        log.info("fresh session after the load")
        _fresh_session_check(url, config, stop_at, work_dir, references, base, report, service)
    if getattr(service, "batcher", None) is not None:
        report.batching = service.batcher.stats()
    report.seconds = time.perf_counter() - started
    return report


def _fresh_session_check(url: str, config: StressConfig, stop_at: float, work_dir: str,
                         references: dict[int, dict], base: dict[str, str], report: StressReport,
                         service) -> None:
    """After the load: a new session sees the unedited model and reproduces user 0's edit exactly."""
    max_tokens = config.max_new_tokens or service.limits.max_new_tokens
    user = User(url, 0, max_tokens, config.request_timeout_s, stop_at, os.path.join(work_dir, "fresh"))
    try:
        for text in base:
            if user.generate(text) != (base[text], base[text]):
                report.mismatches.append(f"fresh session after the load: '{text}' differs from the "
                                         "unedited model")
        seen = user.round()
        report.mismatches += compare_round(0, 0, seen, references[0], base)
    except Exception as exc:
        report.errors.append(f"fresh session: {type(exc).__name__}: {str(exc)[:300]}")
    finally:
        user.close()


# ----- command line ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    defaults = StressConfig()
    p = argparse.ArgumentParser(
        prog="python -m tests.stress",
        description="Launch the app on 127.0.0.1 and load it with simulated users; check errors, "
                    "isolation, fresh-session outputs and memory; report throughput and latency.")
    p.add_argument("--tiny", action="store_true",
                   help="use the test suite's tiny random model and plain gradient-step editors (fast)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model alias, folder or hub id (default: %(default)s)")
    p.add_argument("--quant", choices=QUANT_MODES, default="4bit",
                   help="quantization (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--editor", default=None, help="editor checkpoint folder or 'none' (default: the app's)")
    p.add_argument("--baseline-editor", default=None,
                   help="baseline checkpoint folder or 'none' (default: the app's)")
    p.add_argument("--users", type=int, default=defaults.users, help="concurrent users (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=defaults.rounds,
                   help="edit/generate/undo rounds per user (default: %(default)s)")
    p.add_argument("--warmup-rounds", type=int, default=defaults.warmup_rounds,
                   help="rounds of the concurrent warm-up (default: %(default)s)")
    p.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s,
                   help="seconds one request may take (default: %(default)s)")
    p.add_argument("--deadline", type=float, default=defaults.deadline_s,
                   help="seconds after which no new request starts (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens per generation (default: the app's limit)")
    p.add_argument("--concurrency-limit", type=int, default=None,
                   help="model requests run at once by the app (default: the app's)")
    p.add_argument("--memory-tolerance", type=float, default=defaults.memory_tolerance,
                   help="allowed RSS growth after close over post-warm-up (default: %(default)s)")
    p.add_argument("--batched", nargs="?", type=float, const=20.0, default=None, metavar="WINDOW_MS",
                   help="batch generation calls of different sessions (the app's --batch-window-ms; "
                        "prompt widths within 16 tokens share a batch, so an edited text may differ "
                        "from its single-user run at a near tie in 4 bit; default window when given "
                        "without a value: %(const)s ms; default: off)")
    p.add_argument("--max-extra-pad", type=int, default=16,
                   help="with --batched: most padding tokens a call's prompts may get beyond their run "
                        "alone (the app's --batch-max-extra-pad; 0: only equal widths meet, every text "
                        "exact; default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def _tiny_service(limits, work_dir: str):
    """An EditService on the test suite's tiny random LLaMA (needs the repository's tests/)."""
    from instructedit.editing.editor import Editor
    from instructedit.model.backbone import load_backbone
    from instructedit.web.service import EditService

    try:
        from tests.tiny_models import build_tiny_model
    except ImportError as exc:  # pragma: no cover - only outside the repository
        raise SystemExit(f"--tiny needs the repository's tests/ package on the path: {exc}") from None
    folder = build_tiny_model("llama", Path(work_dir) / "tiny-llama")
    backbone = load_backbone(str(folder), device="cpu")
    editor = Editor.untrained(backbone, step_size=0.5)
    baseline = Editor.untrained(backbone, step_size=0.5, use_instructions=False)
    return EditService(backbone, editor, baseline, limits, export_dir=Path(work_dir) / "exports"), \
        "**Model** tiny random LLaMA"


def _real_service(args, limits):
    from instructedit.web.config import AppConfig
    from instructedit.web.loading import load_models, status_line
    from instructedit.web.service import EditService

    config = replace(AppConfig(), model=args.model, quant=args.quant, device=args.device, limits=limits)
    if args.editor:
        config = replace(config, editor=args.editor)
    if args.baseline_editor:
        config = replace(config, baseline_editor=args.baseline_editor)
    models = load_models(config)
    for warning in models.warnings:
        log.warning("%s", warning)
    return EditService(models.backbone, models.editor, models.baseline, limits, rome=models.rome), status_line(models)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(int(args.verbose), timestamps=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch
    from transformers.utils import logging as hf_logging

    from instructedit.web.config import Limits

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = StressConfig(users=args.users, rounds=args.rounds, warmup_rounds=args.warmup_rounds,
                              request_timeout_s=args.request_timeout, deadline_s=args.deadline,
                              memory_tolerance=args.memory_tolerance, max_new_tokens=args.max_new_tokens)
        limits = Limits(batch_window_ms=args.batched, batch_max_extra_pad=args.max_extra_pad)
        if args.concurrency_limit:
            limits = replace(limits, concurrency_limit=args.concurrency_limit)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="instructedit-stress-models-") as work_dir:
        if args.tiny:
            service, status = _tiny_service(limits, work_dir)
        else:
            service, status = _real_service(args, limits)
        report = run_stress(service, config, status)
    print(report.text())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
