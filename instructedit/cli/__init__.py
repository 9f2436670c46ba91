"""The command line: ``python -m instructedit <command> [--help]`` (``instructedit`` once installed).

A face, like the web app (:mod:`instructedit.web`): no workflow or library module imports it.
One module per command group, each with a ``register(subparsers)`` function that adds its parsers
with ``subparsers.add_parser(...)`` and sets ``func`` on each (``parser.set_defaults(func=handler)``,
where ``handler(args) -> int | None`` returns the exit code; ``None`` means 0):

- :mod:`.info` (``info``), :mod:`.edit` (``edit``, ``merge``), :mod:`.data` (``data stats|fetch|...``),
  :mod:`.train` (``train``), :mod:`.evaluate` (``eval``, ``results``), :mod:`.bench` (``bench``),
  :mod:`.analysis` (``analyze``), :mod:`.trace` (``trace``);
- :mod:`.common`: the shared argument groups (model, editor, edit request) and :class:`~.common.CliError`;
- :mod:`.fields`: the flags of a config dataclass (``train``, ``results``, ``bench``, ``python app.py``),
  one per field, and the dataclass built back from them.

The command modules are imported here, at the top, by name: a missing module is an error, never a
silently missing command. They import only argparse and the torch-free ground at their top (the
model, editing and workflow code is imported inside the command functions), so ``--help`` stays
fast and free of torch.

Expected user errors (bad model, bad edit request, bad checkpoint, ...) print one line to stderr
and exit with status 2; argument errors do the same.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..logs import setup_logging
from . import analysis, bench, calibrate, data, edit, evaluate, info, trace, train
from .common import EXIT_USER_ERROR, OneLineArgumentParser, add_verbose, one_line, user_errors

PROG = "python -m instructedit"
SCRIPT = "instructedit"  # the console script of the installed package (pyproject.toml)

Registrar = Callable[[Any], None]

REGISTRARS: list[Registrar] = [info.register, edit.register, data.register, train.register,
                               evaluate.register, calibrate.register, bench.register, analysis.register, trace.register]
"""Every command group, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command of :data:`REGISTRARS`."""
    prog = SCRIPT if Path(sys.argv[0]).name == SCRIPT else PROG
    parser = OneLineArgumentParser(prog=prog, description="InstructEdit Studio: instruction-based "
                                   "knowledge editing of language models.")
    add_verbose(parser, default=0)
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for user errors, printed as one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0) or 0)
    if getattr(args, "func", None) is None:
        parser.error(f"command {args.command!r} has no handler")
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, user_errors()):
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    return 0 if code is None else int(code)
