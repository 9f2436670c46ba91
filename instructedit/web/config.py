"""Typed settings of the app: what to load, where to listen, and the limits of one server."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..defaults import DEFAULT_PATCH_RANK
from ..editing.schedule import EditSchedule

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

    Each field is also a flag of ``python app.py`` (``queue_size``: ``--queue-size``; ``idle_timeout_s``:
    ``--idle-timeout``), with its entry below as the help text.

    Attributes:
        max_new_tokens: tokens generated (greedily) for every continuation shown (and the
            Playground's maximum).
        max_edits_per_session: active edits one browser session may hold.
        max_input_chars: longest prompt, target, instruction, topic or list line accepted.
        max_lines: most rephrases or locality probes per edit.
        queue_size: requests that may wait for the model; more are turned away with a message.
        concurrency_limit: model requests (edit, import, generate) that run at the same time.
        idle_timeout_s: seconds after which an unused session's edits are forgotten.
        max_sessions: most sessions held at once.
        max_total_edits: most active edits over all sessions (bounds the memory of patches).
        max_import_bytes: largest history file accepted by import.
        probe_answer_tokens: tokens of a probe's pre-edit continuation used as its answer
            when measuring locality.
        batch_window_ms: cross-session batching (serving/batcher.py): generation calls of
            different sessions that arrive within this many milliseconds run as one model call,
            each row under its own session's edits (0: only calls that queue while the model is
            busy); calls without edits always run on their own (default, ``None``: off).
        batch_max_rows: most prompts in one batched generation call.
        batch_max_extra_pad: most padding tokens a batched call's prompts may get beyond their
            run alone (calls whose prompt widths differ by more never share a batch); 0 keeps
            every edited text bitwise that of a single-user run, more lets calls of different
            lengths meet within the batcher's stated logit tolerance (docs/reliability.md).
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
    batch_max_extra_pad: int = 16

    def __post_init__(self) -> None:
        checks = {"max_new_tokens": (1, 256), "max_edits_per_session": (1, 1000),
                  "max_input_chars": (10, 1000), "max_lines": (1, 50), "queue_size": (1, 10_000),
                  "concurrency_limit": (1, 64), "max_sessions": (1, 100_000),
                  "max_total_edits": (1, 1_000_000),
                  "probe_answer_tokens": (1, 64), "batch_max_rows": (1, 1024),
                  "batch_max_extra_pad": (0, 256)}
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

    Each field but ``limits`` and ``patch_rank`` (``--patch-rank``, shared with the command line) is
    a flag of ``python app.py`` (``baseline_editor``: ``--baseline-editor``; ``data_dir``:
    ``--data``), with its entry below as the help text.

    Attributes:
        model: model alias (smollm2-135m: the embedded SmolLM2-135M-Instruct), local model folder
            or Hugging Face hub id.
        quant: bitsandbytes quantization of the model, ``none``, ``8bit`` or ``4bit`` (default,
            ``None``: 4bit on CPU, none on a GPU).
        device: cpu, cuda or auto.
        fast_4bit: decode a 4-bit model on a CPU through a fast no-grad route (float32 layers:
            the fused AVX2 kernel of ``model/fused4bit.py``; bf16 layers: bitsandbytes' packed
            AVX512-bf16 kernel; about 3x faster text, see docs/benchmarks.md section 2; some
            continuations can end differently from evaluation's default route); ``--no-fast-4bit``
            shows exactly the texts ``eval`` measures.
        editor: InstructEdit editor checkpoint folder, or ``none`` for one plain gradient step; if
            the shipped checkpoint is missing the app falls back to a plain gradient step and says
            so in its status line (default: the shipped checkpoints/smollm2-135m/instructedit).
        baseline_editor: editor shown next to InstructEdit for comparison (the multi-task MEND
            trained without instructions), or ``none`` to hide the comparison; ``rome`` is the
            same as ``compare`` rome (default: the shipped checkpoints/smollm2-135m/mend-multitask).
        compare: editors shown next to InstructEdit: the baseline (``baseline_editor``), ROME
            (rank-one locate-and-edit of one MLP at the edit's subject; a few seconds an edit on a
            CPU, shown after InstructEdit's result), both, or none.
        patch_rank: rank each trained editor keeps an edit's update at (``None``: full rank).
        edit_steps: passes of each trained editor per edit, each made with the earlier ones active
            (default: the checkpoint's calibrated edit schedule, else 1).
        edit_strength: multiplier of each trained editor's update (default: the checkpoint's
            calibrated edit schedule, else 1).
        edit_rekey: ``on``: re-key each pass of a trained editor's update on the edit's own keys
            (narrower, ROME-like edits), ``off``: do not (default: the checkpoint's edit schedule).
        edit_until: passes after the first only while the edit does not hold at this target
            probability yet (0: every pass; default: the checkpoint's edit schedule).
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: the network;
            ``$GRADIO_SERVER_NAME`` when set).
        port: port to listen on (``$GRADIO_SERVER_PORT`` when set).
        share: also open a temporary public *.gradio.live link (off by default).
        limits: see :class:`Limits`.
        threads: torch CPU threads per request (default, ``None``: the CPU cores divided by the
            concurrency limit, so concurrent requests do not fight over the cores).
        results_file: the Markdown report the Results tab shows when present (default: the
            checkout's docs/results.md).
        figures_dir: the figures (PNG) the Results tab shows when present (default: the
            checkout's docs/figures).
        data_dir: benchmark data folder: its test splits give the blast radius the same-template
            neighbours of an example's sentence; ``none`` or a missing folder: built-in subject
            lists only (default: the checkout's data/).
    """

    model: str = "smollm2-135m"
    quant: str | None = None
    device: str = "auto"
    fast_4bit: bool = True
    editor: str = str(DEFAULT_EDITOR)
    baseline_editor: str = str(DEFAULT_BASELINE)
    compare: str = COMPARE_BASELINE
    patch_rank: int | None = DEFAULT_PATCH_RANK
    edit_steps: int | None = None
    edit_strength: float | None = None
    edit_rekey: str | None = None
    edit_until: float | None = None
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
        if self.edit_rekey not in (None, "on", "off"):
            raise ValueError(f"edit_rekey must be on or off, got {self.edit_rekey!r}")
        if self.edit_steps is not None or self.edit_strength is not None or self.edit_until is not None:
            EditSchedule().with_overrides(steps=self.edit_steps, strength=self.edit_strength,
                                          until=self.edit_until)

    @property
    def schedule_overrides(self) -> tuple[int | None, float | None, bool | None, float | None]:
        """``(steps, strength, rekey, until)`` replacing the trained editors' schedules (``None``: kept)."""
        return (self.edit_steps, self.edit_strength, None if self.edit_rekey is None else self.edit_rekey == "on",
                self.edit_until)


def cpu_threads(config: AppConfig) -> int:
    """Torch threads per request (see :attr:`AppConfig.threads`)."""
    if config.threads:
        return max(1, config.threads)
    return max(1, (os.cpu_count() or 1) // config.limits.concurrency_limit)
