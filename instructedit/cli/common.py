"""What the commands share: the one-line user errors and the argument groups that build a backbone,
an editor and an edit request from the command line.

:func:`add_model_arguments` / :func:`backbone_from_args`, :func:`add_editor_arguments` /
:func:`editor_from_args` and :func:`add_request_arguments` / :func:`request_from_args` pair an
argument group with the object it describes. Only argparse and the torch-free ground are imported
at the top; the model and editing layers are imported inside the functions that build objects, so
``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_MODEL, DEFAULT_PATCH_RANK, DEFAULT_STEP_SIZE, QUANT_MODES, SHIPPED_EDITOR
from ..errors import UserFacingError
from ..instructions import get_task, parse_instruction_choice

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EDITOR = Path(SHIPPED_EDITOR)
EXIT_USER_ERROR = 2


class CliError(UserFacingError):
    """A problem with the command line's input (printed as one line, exit status 2)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def one_line(text: Any) -> str:
    """``text`` on one line (runs of white space, newlines included, become one space)."""
    return " ".join(str(text).split())


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types reported as one line with exit status 2 (see :mod:`instructedit.errors`)."""
    return (UserFacingError, FileExistsError)


# ----- shared argument groups ------------------------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model --quant --dtype --compute-dtype --device``: what :func:`backbone_from_args` reads."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"alias ({DEFAULT_MODEL}), local model folder or hub id (default: %(default)s)")
    group.add_argument("--quant", choices=QUANT_MODES, default="none",
                       help="bitsandbytes quantization (default: %(default)s)")
    group.add_argument("--dtype", default=None,
                       help="dtype of float weights: float32, bfloat16, float16 "
                            "(default: bfloat16 for 4bit on CUDA or a CPU with native bf16, float32 otherwise)")
    group.add_argument("--compute-dtype", default=None, help="compute dtype of 4-bit layers (default: --dtype)")
    group.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")


def backbone_from_args(args: argparse.Namespace):
    """Load the backbone chosen by :func:`add_model_arguments`."""
    from ..model.backbone import load_backbone

    if not getattr(args, "verbose", 0):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return load_backbone(args.model, args.quant, dtype=args.dtype, compute_dtype=args.compute_dtype,
                         device=args.device)


def default_editor_path() -> str:
    """The bundled trained editor when present (cwd, then project root), else ``none``."""
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / DEFAULT_EDITOR).is_dir():
            return str(base / DEFAULT_EDITOR)
    return "none"


def add_editor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--editor --step-size``: what :func:`editor_from_args` reads."""
    group = parser.add_argument_group("editor")
    group.add_argument("--editor", default=None,
                       help=f"editor checkpoint folder, or 'none' for one plain gradient step "
                            f"(default: {DEFAULT_EDITOR} if it exists, else none)")
    group.add_argument("--step-size", type=float, default=None,
                       help=f"step size of --editor none (default: {DEFAULT_STEP_SIZE})")
    add_patch_rank_argument(group)
    add_schedule_arguments(group)


def parse_patch_rank(text: str) -> int | None:
    """``--patch-rank``: a positive integer, or ``full`` for untruncated edits."""
    if text.strip().lower() == "full":
        return None
    try:
        rank = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}") from None
    if rank < 1:
        raise argparse.ArgumentTypeError(f"the patch rank must be at least 1, got {rank}")
    return rank


def add_patch_rank_argument(parser) -> None:
    """``--patch-rank``: how each trained edit's update is stored (read by the editor loaders)."""
    default = "full" if DEFAULT_PATCH_RANK is None else str(DEFAULT_PATCH_RANK)
    parser.add_argument("--patch-rank", type=parse_patch_rank, default=argparse.SUPPRESS,
                        help="keep each edit's update of a module as its best rank-k "
                             f"approximation, or 'full' (default: {default} for trained editors, "
                             "full rank for a plain gradient step)")


def add_schedule_arguments(parser) -> None:
    """``--edit-steps --edit-strength --edit-rekey --edit-until``: how a trained editor applies its update (read
    by :func:`apply_schedule_args`; default: the checkpoint's calibrated schedule, else one step)."""
    parser.add_argument("--edit-steps", type=int, default=argparse.SUPPRESS,
                        help="passes of a trained editor per edit, each with the earlier ones "
                             "active (default: the checkpoint's edit_schedule, else 1)")
    parser.add_argument("--edit-strength", type=float, default=argparse.SUPPRESS,
                        help="multiplier of a trained editor's update (default: the checkpoint's "
                             "edit_schedule, else 1)")
    parser.add_argument("--edit-rekey", choices=("on", "off"), default=argparse.SUPPRESS,
                        help="re-key each pass of a trained editor's update on the edit's own keys "
                             "(narrower, ROME-like edits; default: the checkpoint's edit_schedule, else off)")
    parser.add_argument("--edit-until", type=float, default=argparse.SUPPRESS, metavar="P",
                        help="take passes after the first only while the edit's target has a per-token "
                             "probability below P on its inputs (0: every pass; default: the "
                             "checkpoint's edit_schedule, else every pass)")


def apply_schedule_args(editor, args: argparse.Namespace):
    """``editor`` with ``--edit-steps/--edit-strength/--edit-rekey/--edit-until`` applied (unchanged
    when none is given or the editor is not a trained MEND-style editor)."""
    from ..editing.editor import Editor

    rekey = getattr(args, "edit_rekey", None)
    overrides = (getattr(args, "edit_steps", None), getattr(args, "edit_strength", None),
                 None if rekey is None else rekey == "on", getattr(args, "edit_until", None))
    if overrides == (None, None, None, None):
        return editor
    if not isinstance(editor, Editor):
        raise CliError("--edit-steps/--edit-strength/--edit-rekey/--edit-until apply to trained editors and "
                       "gradient steps only")
    try:
        return editor.with_schedule_overrides(*overrides)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def editor_from_args(args: argparse.Namespace, backbone):
    """An :class:`~instructedit.editing.editor.Editor` for ``backbone`` as chosen on the command line
    (``--editor none``: one plain gradient step)."""
    from ..editing.editors import GRADIENT, load_editor

    path = args.editor if args.editor is not None else default_editor_path()
    if path.strip().lower() == "none":
        # a plain gradient step stays exact (full rank) unless --patch-rank is given
        try:
            editor = load_editor(GRADIENT, backbone, step_size=args.step_size,
                                 patch_rank=getattr(args, "patch_rank", None))
        except ValueError as exc:
            raise CliError(f"--step-size: {exc}") from exc
        return apply_schedule_args(editor, args)
    if args.step_size is not None:
        log.warning("--step-size is ignored with a trained editor (%s)", path)
    return apply_schedule_args(load_editor(path, backbone, patch_rank=trained_patch_rank(args)), args)


def trained_patch_rank(args: argparse.Namespace) -> int | None:
    """``--patch-rank`` for a trained editor: the given value, else ``DEFAULT_PATCH_RANK``."""
    return getattr(args, "patch_rank", DEFAULT_PATCH_RANK)


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """The edit request: ``--task --prompt --target --instruction --topic --label``."""
    group = parser.add_argument_group("edit request")
    group.add_argument("--task", default="custom",
                       help="task: counterfact, recent, convsent, zsre or custom (default: %(default)s)")
    group.add_argument("--prompt", required=True, help="the prompt whose answer changes")
    group.add_argument("--target", required=True, help="the new answer")
    group.add_argument("--instruction", default=None,
                       help="instruction index 0-9, 'heldout', custom text or 'none' "
                            "(default: 0 for tasks with instructions, none for custom)")
    group.add_argument("--topic", default=None, help="ConvSent topic ([TOPIC])")
    group.add_argument("--label", default=None, help="ConvSent label: positive or negative ([LABEL])")
    group.add_argument("--subject", default=None,
                       help="what the fact is about, as written in the prompt (editors keyed on the "
                            "subject's tokens need it; default: the ConvSent topic, else a guess from "
                            "the prompt, as the studio pre-fills it)")


def instruction_choice(task: str, value: str | None) -> int | str | None:
    """The instruction choice of ``--instruction`` (default: 0 when the task has instructions)."""
    if value is None:
        return 0 if get_task(task).instructions else None
    return parse_instruction_choice(value, task)


def request_from_args(args: argparse.Namespace):
    """The :class:`~instructedit.editing.editor.EditRequest` of :func:`add_request_arguments`."""
    from ..editing.editor import EditRequest
    from ..editing.subject_guess import guess_subject

    rephrases = tuple(getattr(args, "rephrase", None) or ())
    probes = tuple(getattr(args, "probe", None) or ())
    for kind, texts in (("rephrase", rephrases), ("probe", probes)):
        for i, text in enumerate(texts, 1):
            if not text.strip():
                raise CliError(f"--{kind} number {i} is empty")
    return EditRequest(prompt=args.prompt, target=args.target, task=args.task,
                       instruction=instruction_choice(args.task, args.instruction),
                       topic=args.topic, label=args.label, rephrases=rephrases, probes=probes,
                       subject=(getattr(args, "subject", None) or args.topic
                                or guess_subject(args.prompt) or None))


def add_verbose(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """``-v/--verbose`` (counted); the entry point configures logging from it."""
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help="log more (-v: info, -vv: debug)")
