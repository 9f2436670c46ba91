"""The ``analyze`` command: PCA picture of an editor's transformed gradients per task.

The analysis itself is :mod:`instructedit.evaluate.analysis` (it needs torch: imported inside the
command function, so that ``--help`` stays light).
"""
from __future__ import annotations

import argparse
import json

from ..data.tasks import SplitError
from .common import CliError, add_model_arguments, add_verbose, backbone_from_args


def register(subparsers) -> None:
    """Add the ``analyze`` subcommand."""
    p = subparsers.add_parser(
        "analyze", help="PCA picture of an editor's transformed gradients per task",
        description="Edit a seeded sample of each task's records, take the editor's transformed "
                    "gradient factors at one edited module, project them to 2-D with PCA, draw "
                    "them coloured by task (PNG) and print silhouette scores.")
    add_model_arguments(p)
    p.add_argument("--editor", required=True, help="editor checkpoint folder")
    p.add_argument("--no-instructions", action="store_true",
                   help="feed the editor unwrapped inputs (no instructions)")
    p.add_argument("--data", default="data", help="data folder (default: %(default)s)")
    p.add_argument("--split", default="test", choices=("val", "test"), help="split (default: %(default)s)")
    p.add_argument("--limit", type=int, default=100, help="records per task (default: %(default)s)")
    p.add_argument("--module", default=None, help="edited module to read (default: the last edited one)")
    p.add_argument("--seed", type=int, default=0, help="seeds samples and instructions (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="edits per pass (default: %(default)s)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_verbose(p)
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..editing.editor import Editor
    from ..evaluate.analysis import analysis_records, analyze

    if args.limit < 2:
        raise CliError(f"--limit must be at least 2, got {args.limit}")
    try:
        records = analysis_records(args.data, args.limit, args.split, args.seed)
    except (SplitError, OSError) as exc:
        raise CliError(str(exc)) from exc
    backbone = backbone_from_args(args)
    editor = Editor.from_pretrained(args.editor, backbone)
    if args.no_instructions:
        editor.use_instructions = False
    try:
        result = analyze(editor, records, args.out, seed=args.seed, batch_size=args.batch_size,
                         module=args.module)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{result.editor} ({'with' if result.use_instructions else 'without'} instructions) at "
              f"{result.module}: silhouette {result.silhouette_2d:.3f} in 2-D, "
              f"{result.silhouette_full:.3f} in full; PCA explains {sum(result.explained_variance):.1%}; "
              f"wrote {result.figure}")
    return 0
