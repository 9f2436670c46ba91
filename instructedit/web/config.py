"""Typed settings of the app: what to load, where to listen, and the limits of one server."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..defaults import DEFAULT_PATCH_RANK

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EDITOR = PROJECT_ROOT / "checkpoints" / "smollm2-135m" / "instructedit"
DEFAULT_BASELINE = PROJECT_ROOT / "checkpoints" / "smollm2-135m" / "mend-multitask"
FALLBACK_STEP_SIZE = 0.03
COMPARE_BASELINE, COMPARE_ROME, COMPARE_BOTH, COMPARE_NONE = "baseline", "rome", "both", "none"
COMPARE_CHOICES = (COMPARE_BASELINE, COMPARE_ROME, COMPARE_BOTH, COMPARE_NONE)
"""Which editors are shown next to InstructEdit: the baseline, ROME, both or neither."""


@dataclass(frozen=True)
class Limits:
    """Limits that keep one shared server responsive.

    Attributes:
        max_new_tokens: greedy tokens generated for every continuation shown.
        max_edits_per_session: active edits one session may hold.
        max_input_chars: longest prompt, target, instruction, topic or line of a list.
        max_lines: most rephrases or locality probes per edit.
        queue_size: most requests waiting for the model at once (more are refused).
        concurrency_limit: model requests that run at the same time.
        idle_timeout_s: a session unused this long is forgotten.
        max_sessions: most sessions held at once.
        max_total_edits: most active edits over all sessions (bounds the memory of patches).
        max_import_bytes: largest history file accepted by import.
        probe_answer_tokens: tokens of a probe's pre-edit continuation used as its answer
            when measuring locality.
        batch_window_ms: cross-session batching of generation (:mod:`instructedit.serving.batcher`):
            how long a waiting call waits for other sessions' calls to share its batch; ``None``
            (the default): off, every call runs on its own.
        batch_max_rows: most prompts in one batched call.
    """

    max_new_tokens: int = 20
    max_edits_per_session: int = 20
    max_input_chars: int = 500
    max_lines: int = 8
    queue_size: int = 32
    concurrency_limit: int = 2
    idle_timeout_s: float = 3600.0
    max_sessions: int = 500
    max_total_edits: int = 400
    max_import_bytes: int = 1_000_000
    probe_answer_tokens: int = 5
    batch_window_ms: float | None = None
    batch_max_rows: int = 16

    def __post_init__(self) -> None:
        checks = {"max_new_tokens": (1, 256), "max_edits_per_session": (1, 1000),
                  "max_input_chars": (10, 1000), "max_lines": (1, 50), "queue_size": (1, 10_000),
                  "concurrency_limit": (1, 64), "max_sessions": (1, 100_000),
                  "max_total_edits": (1, 1_000_000),
                  "probe_answer_tokens": (1, 64), "batch_max_rows": (1, 1024)}
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        if self.batch_window_ms is not None and not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(f"batch_window_ms must be between 0 and 1000 (or None: off), got "
                             f"{self.batch_window_ms}")


def on_spaces() -> bool:
    """True on a Hugging Face Space (which sets ``SPACE_ID``)."""
    return bool(os.environ.get("SPACE_ID"))


def default_host() -> str:
    """``$GRADIO_SERVER_NAME`` (set to 0.0.0.0 on Spaces) or 127.0.0.1."""
    return os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"


def default_port() -> int:
    """``$GRADIO_SERVER_PORT`` or 7860."""
    return int(os.environ.get("GRADIO_SERVER_PORT") or 7860)


@dataclass(frozen=True)
class AppConfig:
    """Everything ``python app.py`` decides from its flags.

    Attributes:
        model: backbone alias, folder or hub id.
        quant: ``none``, ``8bit`` or ``4bit``; ``None`` means 4bit on CPU, none on a GPU.
        device: ``cpu``, ``cuda`` or ``auto``.
        editor: InstructEdit checkpoint folder, or ``none`` for a plain gradient step.
        baseline_editor: baseline checkpoint folder, or ``none`` to hide the comparison
            (``rome``: the same as ``compare="rome"``).
        compare: the editors shown next to InstructEdit (:data:`COMPARE_CHOICES`): the
            baseline, ROME (locate-and-edit, needs the edit's subject), both, or none.
        host, port, share: where and how to listen.
        limits: see :class:`Limits`.
        patch_rank: rank each trained editor keeps an edit's update at (``None``: full rank).
        threads: torch CPU threads per request; ``None``: the cores divided by the
            concurrency limit, so concurrent requests do not oversubscribe the CPU.
        results_file, figures_dir: what the Results tab shows when present.
        data_dir: the benchmark data; its test splits (where the examples come from) give the
            blast radius the same-template neighbours of a sentence (built-in lists without it).
    """

    model: str = "smollm2-135m"
    quant: str | None = None
    device: str = "auto"
    editor: str = str(DEFAULT_EDITOR)
    baseline_editor: str = str(DEFAULT_BASELINE)
    compare: str = COMPARE_BASELINE
    patch_rank: int | None = DEFAULT_PATCH_RANK
    host: str = field(default_factory=default_host)
    port: int = field(default_factory=default_port)
    share: bool = False
    limits: Limits = field(default_factory=Limits)
    threads: int | None = None
    results_file: Path = PROJECT_ROOT / "docs" / "results.md"
    figures_dir: Path = PROJECT_ROOT / "docs" / "figures"
    data_dir: Path | None = PROJECT_ROOT / "data"

    def __post_init__(self) -> None:
        if self.compare not in COMPARE_CHOICES:
            raise ValueError(f"compare must be one of {', '.join(COMPARE_CHOICES)}, got {self.compare!r}")


def cpu_threads(config: AppConfig) -> int:
    """Torch threads per request (see :attr:`AppConfig.threads`)."""
    if config.threads:
        return max(1, config.threads)
    return max(1, (os.cpu_count() or 1) // config.limits.concurrency_limit)
