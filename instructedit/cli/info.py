"""``python -m instructedit info``: load a model (optionally 8/4-bit) and describe it."""
from __future__ import annotations

import argparse
import json

from .common import add_model_arguments, add_verbose, backbone_from_args


def register(subparsers) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser("info", help="load a model and describe it",
                                   description="Load a model (optionally 8/4-bit) and print its summary.")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_verbose(parser)
    parser.set_defaults(func=cmd_info)


def _format_table(info: dict) -> str:
    width = max(len(k) for k in info)
    lines = []
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) if value else "-"
        elif key.endswith("_bytes") and isinstance(value, int):
            value = f"{value:,} ({value / 2**20:.1f} MiB)"
        elif isinstance(value, int):
            value = f"{value:,}"
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    info = backbone_from_args(args).info()
    print(json.dumps(info) if args.json else _format_table(info))
    return 0
