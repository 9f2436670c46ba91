"""``python -m instructedit eval`` (one evaluation) and ``python -m instructedit results`` (every
evaluation of ``docs/results.md``: :mod:`instructedit.evaluate.results`).

The evaluation code is imported inside the command functions (it needs torch), so that ``--help``
stays fast; the parser shows the defaults of the torch-free :mod:`instructedit.evaluate.config`.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..data.records import RecordError
from ..data.tasks import SplitError
from ..defaults import DEFAULT_STEP_SIZE as DEFAULT_GRADIENT_STEP
from ..evaluate.config import QUANTS, SECTIONS, ResultsConfig
from ..evaluate.inputs import describe_instruction, parse_instruction
from ..evaluate.selection import SelectionError, limit_records, load_eval_records
from .common import (
    CliError,
    add_model_arguments,
    add_patch_rank_argument,
    add_schedule_arguments,
    add_verbose,
    apply_schedule_args,
    backbone_from_args,
    parse_patch_rank,
)
from .fields import Option, add_fields, build_config, comma_separated

log = logging.getLogger(__name__)

SUMMARY_ROWS = ("n", "task", "reliability", "reliability_pre", "generalization", "locality",
                "locality_kl", "portability", "target_prob_pre", "target_prob_post",
                "target_prob_lift", "sentiment_success", "kl_drawdown", "fluency",
                "plain_reliability", "plain_generalization", "generation_success",
                "neighbourhood_score", "neighbour_unchanged", "neighbour_bleed", "unrelated_bleed",
                "plain_fluency_pre", "plain_fluency", "fluency_ratio", "degenerate",
                "edit_latency_ms", "seconds")


def register(subparsers) -> None:
    """Add the ``eval`` and ``results`` subcommands."""
    register_eval(subparsers)
    register_results(subparsers)


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``eval`` and ``results``: batching, seed, threads."""
    parser.add_argument("--batch-size", type=int, default=8, help="records edited per pass (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds splits, samples and instructions (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def register_eval(subparsers) -> None:
    """Add the ``eval`` subcommand."""
    p = subparsers.add_parser(
        "eval", help="measure reliability, generalization, locality, portability of edits",
        description="Edit each record independently (batched) from the unedited model and report "
                    "reliability, generalization, locality, portability, target-probability lift, "
                    "edit latency, and for ConvSent sentiment success and KL drawdown.")
    add_model_arguments(p)
    p.add_argument("--editor", required=True,
                   help="editor checkpoint folder, 'gradient' (one plain gradient step), "
                        "'finetune' (constrained fine-tuning of the edited MLP matrices on the "
                        "plain prompt), 'rome' "
                        "(or rome:identity / rome:data / rome:generated to pick its key "
                        "covariance) or 'none' (the unedited model: the floor)")
    p.add_argument("--step-size", type=float, default=None,
                   help=f"step size of --editor gradient (default: {DEFAULT_GRADIENT_STEP})")
    add_patch_rank_argument(p)
    add_schedule_arguments(p)
    p.add_argument("--data", required=True, help="a data file (any supported format) or a data folder")
    p.add_argument("--task", default=None, help="task of a data folder (or override a file's task)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split of a data folder (default: %(default)s)")
    p.add_argument("--instruction", default=None,
                   help="seen (default: a seeded choice among 0-8), an index 0-9, heldout, none, "
                        "or your own instruction text")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded sample of N records")
    p.add_argument("--max-probes", type=int, default=4,
                   help="at most N rephrases/portability/locality probes per record (default: %(default)s)")
    p.add_argument("--generation-tokens", type=int, default=20,
                   help="greedy tokens for ConvSent sentiment success (default: %(default)s)")
    p.add_argument("--no-sentiment", action="store_true", help="skip ConvSent generations")
    p.add_argument("--no-plain", action="store_true",
                   help="skip the plain protocol (what a user sees: plain prompts, neighbours, "
                        "continuations; needs generation: slower)")
    add_eval_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, help="also write the JSON object to this file")
    p.add_argument("--records-out", default=None, help="write per-record results (JSON lines) to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose(p)
    p.set_defaults(func=cmd_eval)


def summary_table(result: dict) -> str:
    """The summary as a two-column pandas table."""
    import pandas as pd

    rows = [(k, result[k]) for k in SUMMARY_ROWS if result.get(k) is not None]
    frame = pd.DataFrame(rows, columns=["metric", "value"]).set_index("metric")
    with pd.option_context("display.float_format", "{:.4f}".format):
        return frame.to_string()


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from ..evaluate.editors import editor_label, load_eval_editor
    from ..evaluate.runner import EvalConfig, Evaluator

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        pool = load_eval_records(args.data, args.task, args.split, args.seed)
        records = limit_records(pool, args.limit, args.seed)
    except (SelectionError, SplitError, RecordError, OSError) as exc:
        raise CliError(str(exc)) from exc
    if not records:
        raise CliError(f"no records in {args.data}")
    backbone = backbone_from_args(args)
    try:
        editor = apply_schedule_args(load_eval_editor(args.editor, backbone, args.step_size,
                                                      getattr(args, "patch_rank", "default")), args)
    except ValueError as exc:
        if exc.__class__ is ValueError:
            raise CliError(str(exc)) from exc
        raise
    instruction = parse_instruction(args.instruction)
    config = EvalConfig(instruction=instruction, batch_size=args.batch_size, seed=args.seed,
                        max_probes=args.max_probes, generation_tokens=args.generation_tokens,
                        sentiment=not args.no_sentiment, progress=not args.no_progress,
                        plain=not args.no_plain)
    # same-template neighbours come from the whole split, not only the sampled records
    result = Evaluator(backbone, editor, config, neighbour_pool=pool).run(records)
    out = {**result.summary.to_dict(), "model_id": backbone.model_id,
           "quantization": backbone.config.quant, "editor": editor_label(editor),
           "use_instructions": True if editor is None else editor.use_instructions,
           "patch_rank": None if editor is None else editor.patch_rank,
           "edit_schedule": getattr(editor, "schedule", None) and editor.schedule.to_dict(),
           "instruction": describe_instruction(instruction), "data": str(args.data),
           "split": args.split if Path(args.data).is_dir() else None, "seed": args.seed,
           "limit": args.limit, "batch_size": args.batch_size}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if args.records_out:
        with open(args.records_out, "w", encoding="utf-8") as handle:
            for record in result.records:
                handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"{out['model_id']} ({out['quantization']}), editor {out['editor']}, "
              f"instruction {out['instruction']}, {out['n']} records of {args.data}")
        print(summary_table(out))
    return 0


RESULTS_OPTIONS = {
    "split": Option(choices=("val", "test")),
    "user_quant": Option(choices=QUANTS),
    "patch_ranks": Option(type=comma_separated(parse_patch_rank), shown="1,4,full"),
    "progress": Option(flag="--no-progress", help="no progress bars"),
    "rome": Option(flag="--no-rome", help="leave ROME out of the comparisons"),
}
"""Where a flag differs from the one :func:`~.fields.add_fields` derives from its ResultsConfig field."""


def register_results(subparsers) -> None:
    """Add the ``results`` subcommand: one flag per :class:`ResultsConfig` field."""
    p = subparsers.add_parser(
        "results", help="regenerate docs/results.md and its figures",
        description="Run every evaluation of the results report (Table 3 in kind, seen vs unseen "
                    "instructions, quantized backbones, PCA of transformed gradients, task scaling) "
                    "and write the markdown report and its figures. Every number comes from this run.")
    add_fields(p, ResultsConfig, options=RESULTS_OPTIONS)
    add_verbose(p)
    p.set_defaults(func=cmd_results)


def results_config_from_args(args: argparse.Namespace) -> ResultsConfig:
    """The :class:`ResultsConfig` of the command line, checked."""
    config = build_config(ResultsConfig, args)
    bad = [q for q in config.quants if q not in QUANTS]
    if bad:
        raise CliError(f"unknown --quants {bad}; choose from {QUANTS}")
    for name in ("limit", "pca_limit", "sweep_limit", "batch_size", "rome_limit", "user_limit", "quant_limit",
                 "trace_limit"):
        value = getattr(config, name)
        if value is not None and (value < 1 or (name == "pca_limit" and value < 2)):
            raise CliError(f"--{name.replace('_', '-')} is too small: {value}")
    if config.lanes < 1:
        raise CliError(f"--lanes must be at least 1, got {config.lanes}")
    if config.lanes > 1 and not config.cache_dir:
        raise CliError("--lanes above 1 needs --cache-dir: the lanes share their evaluations through it")
    if not Path(config.data).is_dir():
        raise CliError(f"--data {config.data} is not a data folder")
    unknown = [x for x in config.sections if x not in SECTIONS]
    if unknown or not config.sections:
        raise CliError(f"unknown --sections {unknown}; choose from {', '.join(SECTIONS)}")
    return config


def cmd_results(args: argparse.Namespace) -> int:
    from ..evaluate.report import write_report
    from ..evaluate.results import run_all

    data = run_all(results_config_from_args(args))
    path = write_report(data)
    print(f"wrote {path} ({data.seconds / 60:.1f} min)")
    return 0
