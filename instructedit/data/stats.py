"""Dataset statistics: records per task and split, answer lengths, and leakage checks."""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instructedit.data.leakage import LeakReport, check_task_leaks, keys_of, normalize
from instructedit.data.records import EditRecord
from instructedit.data.tasks import HELD_OUT_TASKS, SPLITS, TASKS, TRAINING_TASKS, load_task

TokenCounter = Callable[[str], int]


def whitespace_count(text: str) -> int:
    """Whitespace-separated words: the length measure used without a tokenizer."""
    return len(text.split())


def token_counter(tokenizer: Any | None) -> TokenCounter:
    """A ``text -> token count`` function for a tokenizer.

    Accepts ``None`` (whitespace words), a Hugging Face tokenizer (``encode`` without special
    tokens), or any callable returning a count, a list of tokens or a dict with ``input_ids``.
    """
    if tokenizer is None:
        return whitespace_count
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        def count(text: str) -> int:
            try:
                return len(encode(text, add_special_tokens=False))
            except TypeError:
                return len(encode(text))
        return count
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be callable or have .encode, got {type(tokenizer).__name__}")

    def call(text: str) -> int:
        out = tokenizer(text)
        if isinstance(out, int):
            return out
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return len(out)
    return call


@dataclass(frozen=True)
class LengthStats:
    """Summary of answer lengths (in tokens or words)."""

    count: int
    mean: float
    median: float
    p95: int
    max: int

    @classmethod
    def of(cls, lengths: Sequence[int]) -> LengthStats:
        if not lengths:
            return cls(0, 0.0, 0.0, 0, 0)
        ordered = sorted(lengths)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return cls(len(ordered), round(statistics.fmean(ordered), 2),
                   float(statistics.median(ordered)), p95, ordered[-1])


@dataclass(frozen=True)
class SplitStats:
    """Counts and answer lengths of one split of one task."""

    task: str
    split: str
    records: int
    subjects: int
    with_rephrase: int
    locality_probes: int
    portability_probes: int
    answer_length: LengthStats


@dataclass
class DataStats:
    """Everything ``data stats`` reports; ``leak`` is True when any check failed."""

    data_dir: str
    length_unit: str
    seed: int
    splits: list[SplitStats] = field(default_factory=list)
    leaks: list[LeakReport] = field(default_factory=list)
    removed_from_train: dict[str, int] = field(default_factory=dict)
    held_out_in_training: int = 0
    cross_task_subjects: dict[str, int] = field(default_factory=dict)

    @property
    def training_leaks(self) -> list[LeakReport]:
        """Leak reports that involve a training split (val/test overlap is only reported)."""
        return [r for r in self.leaks if r.leaks and "train" in (r.first, r.second)]

    @property
    def leak(self) -> bool:
        return bool(self.training_leaks) or self.held_out_in_training > 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["leak"] = self.leak
        return out

    def format_text(self) -> str:
        """A plain-text table of the statistics and the leakage verdict."""
        lines = [f"data: {self.data_dir}   seed: {self.seed}   answer length unit: {self.length_unit}",
                 "",
                 f"{'task':<12}{'split':<7}{'records':>8}{'subjects':>10}{'rephr.':>8}"
                 f"{'loc.':>7}{'port.':>7}{'ans.mean':>10}{'median':>8}{'p95':>6}{'max':>6}"]
        for s in self.splits:
            a = s.answer_length
            lines.append(f"{s.task:<12}{s.split:<7}{s.records:>8}{s.subjects:>10}"
                         f"{s.with_rephrase:>8}{s.locality_probes:>7}{s.portability_probes:>7}"
                         f"{a.mean:>10.2f}{a.median:>8.1f}{a.p95:>6}{a.max:>6}")
        lines.append("")
        for task, n in self.removed_from_train.items():
            lines.append(f"{task}: {n} training record(s) removed for sharing a subject/prompt "
                         "with val/test")
        for r in self.leaks:
            verdict = "LEAK" if r in self.training_leaks else ("shared (not training)" if r.leaks else "ok")
            lines.append(f"{r.task}: {r.first} vs {r.second}: {r.shared_subjects} shared subjects, "
                         f"{r.shared_prompts} shared prompts -> {verdict}")
        for task, n in self.cross_task_subjects.items():
            lines.append(f"note: {n} {task} test subject(s) are also subjects in another task's "
                         "training data (other facts; not counted as leakage)")
        lines.append(f"held-out (zsre) records or prompts in training: {self.held_out_in_training}")
        lines.append("leakage: " + ("FOUND" if self.leak else "none"))
        return "\n".join(lines)


def split_stats(task: str, split: str, records: Sequence[EditRecord],
                count: TokenCounter = whitespace_count) -> SplitStats:
    """:class:`SplitStats` of one list of records; answers are measured as ``" " + target``."""
    return SplitStats(
        task=task, split=split, records=len(records),
        subjects=len({normalize(r.subject) for r in records if r.subject}),
        with_rephrase=sum(1 for r in records if r.rephrases),
        locality_probes=sum(len(r.locality) for r in records),
        portability_probes=sum(len(r.portability) for r in records),
        answer_length=LengthStats.of([count(" " + r.target_new) for r in records]),
    )


def compute_stats(data_dir: str | Path, tokenizer: Any | None = None, seed: int = 0, *,
                  tasks: Sequence[str] = TASKS, include_knowedit: bool = False,
                  length_unit: str | None = None) -> DataStats:
    """Counts, answer lengths and leakage checks of every task's splits in ``data_dir``."""
    count = token_counter(tokenizer)
    unit = length_unit or ("words" if tokenizer is None else "tokens")
    result = DataStats(data_dir=str(data_dir), length_unit=unit, seed=seed)
    loaded = {task: load_task(data_dir, task, seed, include_knowedit=include_knowedit)
              for task in tasks}
    for task, splits in loaded.items():
        for split in SPLITS:
            records = splits.split(split)
            if records or not (split == "train" and task in HELD_OUT_TASKS):
                result.splits.append(split_stats(task, split, records, count))
        result.leaks.extend(check_task_leaks(task, {s: splits.split(s) for s in SPLITS}))
        if splits.removed_from_train:
            result.removed_from_train[task] = splits.removed_from_train
    training = [r for t, s in loaded.items() for r in s.train]
    held_out = [r for t, s in loaded.items() if t in HELD_OUT_TASKS for r in s.val + s.test]
    held_prompts = {normalize(r.prompt) for r in held_out}
    result.held_out_in_training = sum(
        1 for r in training if r.task in HELD_OUT_TASKS or normalize(r.prompt) in held_prompts)
    train_subjects = {k for k in keys_of(training) if k.startswith("subject:")}
    for task in tasks:
        if task in TRAINING_TASKS and task not in HELD_OUT_TASKS:
            other = {k for t, s in loaded.items() if t != task for k in keys_of(s.train)
                     if k.startswith("subject:")}
        else:
            other = train_subjects
        own_test = {k for k in keys_of(loaded[task].test) if k.startswith("subject:")}
        shared = len(own_test & other)
        if shared:
            result.cross_task_subjects[task] = shared
    return result
