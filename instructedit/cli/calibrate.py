"""``calibrate``: choose a trained editor's edit schedule (passes, strength) on a validation split
by the plain protocol, and optionally store it in the checkpoint."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..editing.schedule import EditSchedule
from .common import CliError, add_model_arguments, add_verbose, backbone_from_args

log = logging.getLogger(__name__)

DEFAULT_SCHEDULES = "1x1,2x0.75,3x0.5,4x0.4"  # the candidates the shipped editors were calibrated on


def register(subparsers) -> None:
    """Add the ``calibrate`` subcommand."""
    p = subparsers.add_parser(
        "calibrate", help="choose a trained editor's edit schedule on a val split (plain protocol)",
        description="Evaluate a trained editor with several edit schedules (passes x strength) on "
                    "the same val records, next to the unedited model, and choose the one with the "
                    "best harmonic mean of efficacy (plain reliability, plain generalization, "
                    "generation success) and specificity (neighbourhood score as a share of the "
                    "unedited model's, 1 - neighbour bleed, 1 - unrelated bleed, fluency ratio), "
                    "among those whose text does not degenerate; --write stores it in the checkpoint's editor.json (the app, eval "
                    "and edit then use it by default).")
    add_model_arguments(p)
    p.add_argument("--editor", required=True, help="editor checkpoint folder")
    p.add_argument("--data", default="data", help="data folder (default: %(default)s)")
    p.add_argument("--tasks", default="counterfact",
                   help="comma-separated tasks with a plain protocol (default: %(default)s)")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="split to choose on (default: %(default)s; test only to look, never to choose)")
    p.add_argument("--limit", type=int, default=50, help="seeded records per task (default: %(default)s)")
    p.add_argument("--schedules", default=DEFAULT_SCHEDULES,
                   help="comma-separated STEPSxSTRENGTH candidates (default: %(default)s)")
    p.add_argument("--min-fluency", type=float, default=0.85,
                   help="least fluency ratio (after / before) a candidate may have: below it the "
                        "text degenerates (default: %(default)s)")
    p.add_argument("--max-degenerate", type=float, default=None,
                   help="largest share of edits with a looping or word-salad continuation a candidate "
                        "may have (default: no limit)")
    p.add_argument("--batch-size", type=int, default=8, help="records edited per pass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample and instructions (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--write", action="store_true", help="store the chosen schedule in the checkpoint")
    p.add_argument("--out", default=None, help="write every candidate's summaries (JSON) here")
    p.add_argument("--from", dest="saved", default=None, metavar="JSON",
                   help="choose again from this editor's saved calibration (an earlier --out) under "
                        "--min-fluency and --max-degenerate, evaluating nothing (its tasks, split, "
                        "records and schedules are the saved ones)")
    add_verbose(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..editing.checkpoint import write_edit_schedule
    from ..evaluate.calibration import CalibrationConfig
    from ..train.card import write_card

    try:
        CalibrationConfig(min_fluency=args.min_fluency, max_degenerate=args.max_degenerate)
    except ValueError as exc:
        raise CliError(f"--min-fluency/--max-degenerate: {exc}") from exc
    if not Path(args.editor).is_dir():
        raise CliError(f"--editor {args.editor!r} is not a checkpoint folder")
    result, report = _from_saved(args) if args.saved else _evaluate(args)
    report["command"] = "python -m instructedit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for candidate in result.candidates:
        scores = ", ".join(f"{t} {'–' if s is None else f'{s:.3f}'}" for t, s in candidate.scores.items())
        mark = "  <- chosen" if candidate.schedule == result.chosen else ""
        print(f"steps {candidate.schedule.steps} strength {candidate.schedule.strength:g}: "
              f"score {'not eligible' if candidate.score is None else f'{candidate.score:.3f}'} ({scores}){mark}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if result.chosen is None:
        raise CliError("every schedule degenerates the text on some task (fluency ratio below "
                       "--min-fluency, or more degenerate edits than --max-degenerate); nothing chosen")
    if args.write:
        how = {k: report.get(k) for k in ("split", "tasks", "limit", "seed", "quantization", "min_fluency",
                                           "max_degenerate", "date", "evaluated", "rescored_from", "evaluated_by")
               if k in report and (report[k] is not None or k == "max_degenerate")}
        how["scores"] = {c.schedule.short(): c.score for c in result.candidates}
        how["command"] = report["command"]
        write_edit_schedule(args.editor, result.chosen.to_dict(), how)
        write_card(args.editor)
        print(f"wrote edit_schedule {result.chosen.to_dict()} to {Path(args.editor) / 'editor.json'}")
    return 0


def _evaluate(args: argparse.Namespace):
    """Evaluate every candidate schedule: the calibration and its report (``--out``'s JSON)."""
    import torch

    from ..data.tasks import SplitError
    from ..editing.editors import load_editor
    from ..evaluate.calibration import CalibrationConfig, calibrate, parse_schedule
    from ..evaluate.runner import EvalConfig
    from ..evaluate.selection import SelectionError, limit_records, load_eval_records

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.limit < 1 or args.batch_size < 1:
        raise CliError("--limit and --batch-size must be at least 1")
    try:
        config = CalibrationConfig(schedules=tuple(parse_schedule(s) for s in args.schedules.split(",")),
                                   min_fluency=args.min_fluency, max_degenerate=args.max_degenerate)
    except ValueError as exc:
        raise CliError(f"--schedules/--min-fluency/--max-degenerate: {exc}") from exc
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise CliError("--tasks is empty")
    records, pools = {}, {}
    for task in tasks:
        try:
            pools[task] = load_eval_records(args.data, task, args.split, args.seed)
        except (SelectionError, SplitError, OSError) as exc:
            raise CliError(str(exc)) from exc
        records[task] = limit_records(pools[task], args.limit, args.seed)
        if not records[task]:
            raise CliError(f"no {args.split} records of {task} in {args.data}")
    backbone = backbone_from_args(args)
    editor = load_editor(args.editor, backbone)
    if not hasattr(editor, "with_schedule"):
        raise CliError(f"{args.editor} is not a trained editor checkpoint")
    eval_config = EvalConfig(batch_size=args.batch_size, seed=args.seed, sentiment=False,
                             progress=False, plain=True)
    result = calibrate(editor, records, pools, config, eval_config)
    report = {**result.to_dict(), "editor": str(args.editor), "data": str(args.data), "split": args.split,
              "tasks": tasks, "limit": args.limit, "seed": args.seed,
              "quantization": backbone.config.quant, "min_fluency": args.min_fluency,
              "max_degenerate": args.max_degenerate,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return result, report


def _from_saved(args: argparse.Namespace):
    """Judge a saved calibration of this editor again under the command line's limits."""
    from ..evaluate.calibration import rescore

    try:
        saved = json.loads(Path(args.saved).read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"--from {args.saved}: cannot read a saved calibration: {exc}") from exc
    if not isinstance(saved, dict) or "editor" not in saved:
        raise CliError(f"--from {args.saved}: not a saved calibration (calibrate --out)")
    if Path(saved["editor"]).resolve() != Path(args.editor).resolve():
        raise CliError(f"--from {args.saved} is the calibration of {saved['editor']}, not of {args.editor}")
    try:
        result = rescore(saved, args.min_fluency, args.max_degenerate)
    except ValueError as exc:
        raise CliError(f"--from {args.saved}: {exc}") from exc
    report = {**saved, **result.to_dict(), "min_fluency": args.min_fluency, "max_degenerate": args.max_degenerate,
              "rescored_from": str(args.saved), "evaluated": saved.get("evaluated", saved.get("date")),
              "evaluated_by": saved.get("evaluated_by", saved.get("command")) or _evaluation_command(saved, args.saved),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return result, report


def _evaluation_command(saved: dict, path: str) -> str | None:
    """A command that evaluates ``saved``'s candidates again (for calibrations saved before they
    recorded their command; the schedules, records and backbone are the saved ones)."""
    try:
        schedules = ",".join(EditSchedule.from_dict(c["schedule"]).short() for c in saved["candidates"])
        parts = ["python -m instructedit calibrate", f"--quant {saved['quantization']}",
                 f"--editor {saved['editor']}", f"--data {saved['data']}", f"--tasks {','.join(saved['tasks'])}",
                 f"--split {saved['split']}", f"--limit {saved['limit']}", f"--seed {saved['seed']}",
                 f"--schedules {schedules}", f"--out {path}"]
    except (KeyError, TypeError, ValueError):
        return None
    return " ".join(parts)
