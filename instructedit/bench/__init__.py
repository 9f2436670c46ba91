"""Benchmarks: ``python -m instructedit bench`` (edit latency, generation, memory, fine-tuning
baseline, training step, evaluation throughput), one run writing docs/benchmarks.md."""
from __future__ import annotations

from .cli import register

__all__ = ["register"]
