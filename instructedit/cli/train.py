"""``python -m instructedit train``: meta-train an editor (also under ``accelerate launch``).

The trainer (:mod:`instructedit.train.trainer`, torch) is imported inside :func:`cmd_train`.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from ..defaults import QUANT_MODES
from ..train.config import TrainConfig

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="meta-train an instruction-conditioned MEND editor",
        description="Meta-train an editor on a frozen backbone (InstructEdit, or the multi-task "
                    "MEND baseline with --no-instructions). Keeps the best checkpoint by "
                    "validation score, stops early, resumes from the run folder.")
    p.add_argument("--model", default=None, help="backbone alias, folder or hub id (default: smollm2-135m)")
    p.add_argument("--quant", choices=QUANT_MODES, default=None,
                   help="train on a quantized backbone (default: none)")
    p.add_argument("--data", default=None, help="data folder (default: data)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated training tasks (default: counterfact,recent,convsent)")
    p.add_argument("--no-instructions", action="store_true",
                   help="train the multi-task MEND baseline (inputs without instructions)")
    p.add_argument("--config", default=None, help="JSON file of TrainConfig fields")
    p.add_argument("--steps", type=int, default=None, help="maximum optimisation steps")
    p.add_argument("--batch-size", type=int, default=None, help="edits per step")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps")
    p.add_argument("--val-per-task", type=int, default=None, help="validation records per task")
    p.add_argument("--pool-per-task", type=int, default=None, help="training records per task")
    p.add_argument("--rank", type=int, default=None, help="editor rank")
    p.add_argument("--c-loc", type=float, default=None, help="weight of the locality KL")
    p.add_argument("--c-edit", type=float, default=None, help="weight of the edit NLL")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-cache", action="store_true",
                   help="run the full model every step (slower; the cached step is exact)")
    p.add_argument("--name", default=None, help="editor name recorded in the checkpoint")
    p.add_argument("--out", required=True, help="checkpoint folder (the best checkpoint is kept here)")
    p.add_argument("--run-dir", default=None,
                   help="folder for resumable state and metrics.jsonl (default: runs/<out name>)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved state and start over")
    p.set_defaults(func=cmd_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from --config (if given) overridden by explicit flags."""
    overrides = {
        "model": args.model, "quant": args.quant, "data": args.data,
        "tasks": tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None,
        "steps": args.steps, "batch_size": args.batch_size, "val_every": args.val_every,
        "val_per_task": args.val_per_task, "pool_per_task": args.pool_per_task, "rank": args.rank,
        "c_loc": args.c_loc, "c_edit": args.c_edit, "seed": args.seed, "threads": args.threads,
        "name": args.name,
    }
    if args.no_instructions:
        overrides["use_instructions"] = False
    if args.no_cache:
        overrides["cached"] = False
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in overrides.items() if v is not None and k in known})


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.trainer import Trainer

    config = config_from_args(args)
    if config.name == "instructedit" and not config.use_instructions:
        config.name = "mend-multitask"
    command = "python -m instructedit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    trainer = Trainer(config, Path(args.out), args.run_dir)
    best = trainer.train(command=command, resume=not args.fresh)
    print(json.dumps({"out": args.out, "steps_run": trainer.step, "best": best}, indent=2))
    return 0
