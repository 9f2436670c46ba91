"""``python -m instructedit train``: meta-train an editor (also under ``accelerate launch``).

The trainer (:mod:`instructedit.train.trainer`, torch) is imported inside :func:`cmd_train`.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from ..defaults import QUANT_MODES
from ..train.config import TRAIN_DTYPES, TrainConfig
from .fields import Option, add_fields, given_values

log = logging.getLogger(__name__)


TRAIN_OPTIONS = {
    "quant": Option(choices=QUANT_MODES),
    "dtype": Option(choices=TRAIN_DTYPES),
    "use_instructions": Option(flag="--no-instructions",
                               help="train the multi-task MEND baseline (inputs without instructions)"),
    "cached": Option(flag="--no-cache", help="run the full model every step (slower; the cached step is exact)"),
}
"""Where a flag differs from the one :func:`~.fields.add_fields` derives from its TrainConfig field."""
NOT_FLAGS = ("extra",)
"""TrainConfig fields without a flag (a ``--config`` file sets them)."""


def register(subparsers) -> None:
    """Add the ``train`` subcommand: one flag per :class:`TrainConfig` field, and the run's own."""
    p = subparsers.add_parser(
        "train", help="meta-train an instruction-conditioned MEND editor",
        description="Meta-train an editor on a frozen backbone (InstructEdit, or the multi-task "
                    "MEND baseline with --no-instructions). Keeps the best checkpoint by "
                    "validation score, stops early, resumes from the run folder.")
    p.add_argument("--config", default=None, help="JSON file of TrainConfig fields")
    p.add_argument("--out", required=True, help="checkpoint folder (the best checkpoint is kept here)")
    p.add_argument("--run-dir", default=None,
                   help="folder for resumable state and metrics.jsonl (default: runs/<out name>)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved state and start over")
    group = p.add_argument_group("training settings", "the fields of TrainConfig; a flag given "
                                 "overrides --config")
    add_fields(group, TrainConfig, exclude=NOT_FLAGS, options=TRAIN_OPTIONS, given_only=True)
    p.set_defaults(func=cmd_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from --config (if given) overridden by the flags given."""
    overrides = given_values(TrainConfig, args)
    if overrides.get("tasks") == ():  # --tasks "": the default tasks, as before
        del overrides["tasks"]
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig(**overrides)


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
