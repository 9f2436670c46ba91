"""Benchmarks (edit latency, generation, memory, fine-tuning baseline, training step, evaluation
throughput), one run writing docs/benchmarks.md; the command is :mod:`instructedit.cli.bench`."""
