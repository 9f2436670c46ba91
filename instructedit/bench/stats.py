"""Summaries of repeated measurements: median with min and max."""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """Median, min and max of ``n`` measurements (in the unit the caller names)."""

    median: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def scaled(self, factor: float) -> Summary:
        return Summary(self.median * factor, self.min * factor, self.max * factor, self.n)

    def inverse(self, numerator: float = 1.0) -> Summary:
        """``numerator / x`` of every measurement (e.g. seconds -> items per second)."""
        return Summary(numerator / self.median, numerator / self.max, numerator / self.min, self.n)


def summarize(values: Sequence[float]) -> Summary:
    """The summary of ``values`` (at least one)."""
    if not values:
        raise ValueError("nothing was measured")
    values = [float(v) for v in values]
    return Summary(statistics.median(values), min(values), max(values), len(values))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` (inf when the denominator is zero)."""
    return float(numerator) / float(denominator) if denominator else float("inf")


@dataclass
class Stopwatch:
    """Accumulates wall-clock seconds over several ``with watch.running():`` blocks."""

    seconds: float = 0.0
    calls: int = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result
