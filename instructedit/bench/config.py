"""Typed settings of a benchmark run (the full run and the ``--quick`` smoke run)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..defaults import DEFAULT_MODEL, QUANT_MODES

QUANT_CHOICES: tuple[str, ...] = QUANT_MODES


@dataclass(frozen=True)
class Goals:
    """The targets each section is judged against."""

    edit_latency_ratio: float = 1.5        # edit / bare forward+backward, every quant mode
    generation_overhead_at_10: float = 0.05  # tokens/s lost with 10 active edits
    fourbit_footprint_share: float = 0.25  # 4-bit footprint / fp32 footprint
    edit_kilobytes: float = 1024.0         # an edit should cost kilobytes: below 1 MiB
    finetune_speedup: float = 10.0         # fine-tuning latency / editor latency
    training_speedup: float = 5.0          # full-model step time / cached step time
    first_answer_s: float = 3.0            # studio: edit request to its first look, one user
    decode_speedup: float = 3.0            # lean decoder tokens/s / model.generate tokens/s


@dataclass(frozen=True)
class FinetuneConfig:
    """The constrained fine-tuning baseline (Adam on the editor's edited matrices, as a patch).

    ``linf``: after each step every weight stays within ``linf`` of its original value (the
    norm constraint of constrained fine-tuning; ``None`` disables it). Training stops when every
    target token is the greedy (argmax) prediction or after ``max_steps`` steps.
    """

    lr: float = 1e-4
    max_steps: int = 30
    linf: float | None = 1e-3


@dataclass(frozen=True)
class BenchConfig:
    """What one ``instructedit bench`` run measures and how often.

    Fields that a command line can read are also flags of ``python -m instructedit bench``
    (``latency_edits``: ``--latency-edits``), with their entry below as the help text.

    Attributes:
        model: backbone alias, folder or hub id.
        quants: quantization modes to measure (edit latency, generation, memory).
        editor: editor checkpoint folder or ``none`` (an untrained editor of ``step_size``).
        step_size: step size of ``editor`` ``none``.
        data: data folder (CounterFact test records are the edits).
        threads: torch CPU threads (default: torch's).
        seed: seeds torch and the samples of records.
        latency_edits: edits timed per mode (each next to its bare forward+backward floor).
        latency_warmup: untimed edits before the timed ones.
        active_counts: numbers of active edits for the generation benchmark.
        new_tokens: tokens per generation.
        generation_repeats: timed generations per number of active edits (and per decoding path).
        generation_prompt: the prompt continued by the generation benchmark.
        compression_edits: edits of the patch-compression study.
        svd_ranks: ranks of the patch-compression study.
        finetune_edits: CounterFact test edits in the fine-tuning comparison.
        rome_edits: CounterFact test edits timed with the editor and with ROME (section 4b).
        first_answer_edits: CounterFact test edits of the studio's first-answer section (1b).
        first_answer_tokens: tokens of each continuation the studio shows (its default limit).
        finetune: the constrained fine-tuning baseline's settings.
        train_batches: distinct training batches timed.
        train_repeats: timed passes over the training batches.
        train_pool_per_task: records per task in the training pool of the training-step section.
        eval_records: records of the evaluation-throughput run (4-bit when measured).
        eval_batch_size: the evaluator's batch size in the evaluation-throughput run.
        profile_top: rows of each torch.profiler table (where a goal is missed).
        goals: the targets each section is judged against.
        quick: a few items per section (smoke test; see ``quick_version``).
    """

    model: str = DEFAULT_MODEL
    quants: tuple[str, ...] = QUANT_CHOICES
    editor: str | None = None
    step_size: float | None = None
    data: str = "data"
    threads: int | None = None
    seed: int = 0
    latency_edits: int = 30
    latency_warmup: int = 2
    active_counts: tuple[int, ...] = (0, 1, 10, 50)
    new_tokens: int = 32
    generation_repeats: int = 3
    generation_prompt: str = "Here is a short story about a lighthouse keeper and her dog:"
    compression_edits: int = 20
    svd_ranks: tuple[int, ...] = (1, 2, 4, 8)
    finetune_edits: int = 50
    rome_edits: int = 8
    first_answer_edits: int = 5
    first_answer_tokens: int = 20
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train_batches: int = 3
    train_repeats: int = 3
    train_pool_per_task: int = 16
    eval_records: int = 32
    eval_batch_size: int = 8
    profile_top: int = 8
    goals: Goals = field(default_factory=Goals)
    quick: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["quants"] = list(self.quants)
        data["active_counts"] = list(self.active_counts)
        data["svd_ranks"] = list(self.svd_ranks)
        return data

    def quick_version(self) -> BenchConfig:
        """The smoke-test settings: every section runs, on a handful of items."""
        return replace(self, latency_edits=3, latency_warmup=1, active_counts=(0, 1, 2, 3),
                       new_tokens=4, generation_repeats=2, compression_edits=2, svd_ranks=(1, 2),
                       finetune_edits=2, rome_edits=1, first_answer_edits=1, finetune=replace(self.finetune, max_steps=3),
                       train_batches=1, train_repeats=2, train_pool_per_task=4, eval_records=2, eval_batch_size=2,
                       profile_top=3, quick=True)
