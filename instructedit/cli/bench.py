"""``python -m instructedit bench``: measure speed and memory; write docs/benchmarks.md.

The benchmarks (:mod:`instructedit.bench.runner`, torch) are imported inside :func:`cmd_bench`.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ..bench.config import QUANT_CHOICES, BenchConfig
from ..bench.report import render_markdown
from ..data.tasks import missing_files
from ..defaults import DEFAULT_MODEL
from .common import CliError, add_editor_arguments

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench", help="benchmark edit latency, generation, memory, fine-tuning, training, evaluation",
        description="Measure, in one run: edit latency against a bare forward+backward, generation "
                    "speed with 0/1/10/50 active edits, memory (backbone, per edit, per session, "
                    "compression), the editor against constrained fine-tuning, cached vs full "
                    "training steps and evaluation throughput. Each figure is a median with min/max.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="backbone alias, folder or hub id (default: %(default)s)")
    p.add_argument("--quant", default="all", choices=(*QUANT_CHOICES, "all"),
                   help="quantization mode(s) to measure (default: %(default)s)")
    add_editor_arguments(p)
    p.add_argument("--data", default="data", help="data folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="a few items per section (smoke test)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--out", default=None, help="write the Markdown report here (e.g. docs/benchmarks.md)")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log progress")
    p.set_defaults(func=cmd_bench)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`~instructedit.bench.config.BenchConfig` of the command line."""
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be at least 1, got {args.threads}")
    if args.step_size is not None and not args.step_size > 0:
        raise CliError(f"--step-size must be positive, got {args.step_size}")
    quants = QUANT_CHOICES if args.quant == "all" else (args.quant,)
    config = BenchConfig(model=args.model, quants=tuple(quants), editor=args.editor,
                         step_size=args.step_size, data=args.data, threads=args.threads)
    return config.quick_version() if args.quick else config


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.runner import run_bench

    config = config_from_args(args)
    if missing_files(config.data, ("counterfact", "recent", "convsent")):
        raise CliError(f"{config.data}: the data folder lacks CounterFact/Recent/ConvSent files "
                       "(see docs/data.md)")
    command = "python -m instructedit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_bench(replace(config))
    result["command"] = command if sys.argv[1:2] == ["bench"] else "python -m instructedit bench"
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_markdown(result), encoding="utf-8")
        log.info("wrote %s", out)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for row in result["goals"]:
            mark = "met " if row["met"] else "MISS"
            print(f"[{mark}] {row['goal']}: {row['value']} (goal {row['target']}) {row['note']}".rstrip())
        if args.out:
            print(f"report: {args.out}")
    return 0
