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
from .common import CliError, add_editor_arguments, default_editor_path
from .fields import add_fields, given_values

log = logging.getLogger(__name__)


NOT_FLAGS = ("finetune", "goals")
"""BenchConfig fields without a flag (nested settings)."""
OWN_FLAGS = {"quants": "--quant", "editor": "--editor", "step_size": "--step-size"}
"""BenchConfig fields set by a flag of this module or of :func:`~.common.add_editor_arguments`."""


def register(subparsers) -> None:
    """Add the ``bench`` subcommand: one flag per :class:`BenchConfig` field (a few of their own:
    :data:`OWN_FLAGS`)."""
    p = subparsers.add_parser(
        "bench", help="benchmark edit latency, generation, memory, fine-tuning, training, evaluation",
        description="Measure, in one run: edit latency against a bare forward+backward, generation "
                    "speed with 0/1/10/50 active edits, memory (backbone, per edit, per session, "
                    "compression), the editor against constrained fine-tuning, cached vs full "
                    "training steps and evaluation throughput. Each figure is a median with min/max.")
    add_fields(p, BenchConfig, include=("model",), given_only=True)
    p.add_argument("--quant", default="all", choices=(*QUANT_CHOICES, "all"),
                   help="quantization mode(s) to measure (default: %(default)s)")
    add_editor_arguments(p)
    add_fields(p, BenchConfig, exclude=("model", *OWN_FLAGS, *NOT_FLAGS), given_only=True)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--out", default=None, help="write the Markdown report here (e.g. docs/benchmarks.md)")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log progress")
    p.set_defaults(func=cmd_bench)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`~instructedit.bench.config.BenchConfig` of the command line (``--quick``: the
    smoke-test settings, less the flags given)."""
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise CliError(f"--threads must be at least 1, got {args.threads}")
    if args.step_size is not None and not args.step_size > 0:
        raise CliError(f"--step-size must be positive, got {args.step_size}")
    quants = QUANT_CHOICES if args.quant == "all" else (args.quant,)
    given = given_values(BenchConfig, args)
    if given.get("editor") is None:  # the shipped editor when present, else a plain gradient step
        given["editor"] = default_editor_path()
    config = BenchConfig(**given, quants=tuple(quants))
    return replace(config.quick_version(), **given) if config.quick else config


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
