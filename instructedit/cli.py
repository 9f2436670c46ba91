"""The command line: ``python -m instructedit <command> [--help]`` (``instructedit`` once installed).

Subcommands are added by registration functions ``register(subparsers)`` (see
:data:`REGISTRARS` and :data:`COMMAND_MODULES`). A registration adds one or more parsers with
``subparsers.add_parser(...)`` and sets ``func`` on each: ``parser.set_defaults(func=handler)``,
where ``handler(args) -> int | None`` returns the exit code (``None`` means 0). Optional
registrations live in modules that may not exist yet; a module that cannot be imported is skipped
(``ImportError`` only: any other error while importing it is a bug and is raised).

Expected user errors (bad model, bad edit request, bad checkpoint, ...) print one line to stderr
and exit with status 2; argument errors do the same. Reusable helpers for other modules'
commands: :func:`add_model_arguments` / :func:`backbone_from_args` and
:func:`add_editor_arguments` / :func:`editor_from_args`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_STEP_SIZE, SHIPPED_EDITOR
from .errors import UserFacingError
from .logs import setup_logging

log = logging.getLogger(__name__)

PROG = "python -m instructedit"
SCRIPT = "instructedit"  # the console script of the installed package (pyproject.toml)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EDITOR = Path(SHIPPED_EDITOR)
EXIT_USER_ERROR = 2

Registrar = Callable[[Any], None]


class CliError(UserFacingError):
    """A problem with the command line's input (printed as one line, exit status 2)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {_one_line(message)} (see --help)\n")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types reported as one line with exit status 2 (see :mod:`instructedit.errors`)."""
    return (UserFacingError, FileExistsError)


# ----- shared argument groups ------------------------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model --quant --dtype --compute-dtype --device``: what :func:`backbone_from_args` reads."""
    from .defaults import DEFAULT_MODEL, QUANT_MODES

    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"alias ({DEFAULT_MODEL}), local model folder or hub id (default: %(default)s)")
    group.add_argument("--quant", choices=QUANT_MODES, default="none",
                       help="bitsandbytes quantization (default: %(default)s)")
    group.add_argument("--dtype", default=None,
                       help="dtype of float weights: float32, bfloat16, float16 "
                            "(default: bfloat16 for 4bit, float32 otherwise)")
    group.add_argument("--compute-dtype", default=None, help="compute dtype of 4-bit layers (default: --dtype)")
    group.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")


def backbone_from_args(args: argparse.Namespace):
    """Load the backbone chosen by :func:`add_model_arguments`."""
    from .backbone import load_backbone

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
    from .defaults import DEFAULT_PATCH_RANK

    default = "full" if DEFAULT_PATCH_RANK is None else str(DEFAULT_PATCH_RANK)
    parser.add_argument("--patch-rank", type=parse_patch_rank, default=argparse.SUPPRESS,
                        help="keep each edit's update of a module as its best rank-k "
                             f"approximation, or 'full' (default: {default} for trained editors, "
                             "full rank for a plain gradient step)")


def editor_from_args(args: argparse.Namespace, backbone):
    """An :class:`~instructedit.editor.Editor` for ``backbone`` as chosen on the command line
    (``--editor none``: one plain gradient step)."""
    from .editors import GRADIENT, load_editor

    path = args.editor if args.editor is not None else default_editor_path()
    if path.strip().lower() == "none":
        # a plain gradient step stays exact (full rank) unless --patch-rank is given
        try:
            return load_editor(GRADIENT, backbone, step_size=args.step_size,
                               patch_rank=getattr(args, "patch_rank", None))
        except ValueError as exc:
            raise CliError(f"--step-size: {exc}") from exc
    if args.step_size is not None:
        log.warning("--step-size is ignored with a trained editor (%s)", path)
    return load_editor(path, backbone, patch_rank=trained_patch_rank(args))


def trained_patch_rank(args: argparse.Namespace) -> int | None:
    """``--patch-rank`` for a trained editor: the given value, else ``DEFAULT_PATCH_RANK``."""
    from .defaults import DEFAULT_PATCH_RANK

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


def instruction_choice(task: str, value: str | None) -> int | str | None:
    """The instruction choice of ``--instruction`` (default: 0 when the task has instructions)."""
    from .instructions import get_task, parse_instruction_choice

    if value is None:
        return 0 if get_task(task).instructions else None
    return parse_instruction_choice(value, task)


def request_from_args(args: argparse.Namespace):
    from .editor import EditRequest

    rephrases = tuple(getattr(args, "rephrase", None) or ())
    probes = tuple(getattr(args, "probe", None) or ())
    for kind, texts in (("rephrase", rephrases), ("probe", probes)):
        for i, text in enumerate(texts, 1):
            if not text.strip():
                raise CliError(f"--{kind} number {i} is empty")
    return EditRequest(prompt=args.prompt, target=args.target, task=args.task,
                       instruction=instruction_choice(args.task, args.instruction),
                       topic=args.topic, label=args.label, rephrases=rephrases, probes=probes)


def _add_verbose(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help="log more (-v: info, -vv: debug)")


# ----- info ------------------------------------------------------------------------------------
def register_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="load a model and describe it",
                                   description="Load a model (optionally 8/4-bit) and print its summary.")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbose(parser)
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


# ----- edit ------------------------------------------------------------------------------------
def register_edit(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit", help="make one edit and show its effect",
        description="Compute one edit and print the wrapped input, greedy continuations before and "
                    "after, the target's probability and token accuracy before and after (on the "
                    "wrapped edit input and on the raw prompt), rephrases and unrelated probes.")
    add_model_arguments(parser)
    add_editor_arguments(parser)
    add_request_arguments(parser)
    parser.add_argument("--rephrase", action="append", default=[],
                        help="a rephrased prompt (wrapped with the same instruction); repeatable")
    parser.add_argument("--probe", action="append", default=[],
                        help="an unrelated prompt that should not change (not wrapped); repeatable")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="greedy tokens (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbose(parser)
    parser.set_defaults(func=cmd_edit)


def target_scores(result) -> dict:
    """Teacher-forced probability and token accuracy of the edit's target after one measured probe
    (a :class:`~instructedit.measuring.probing.ProbeResult`), before (``pre``) and after (``post``)."""
    return {"pre": {"probability": result.p_target_before, "token_accuracy": result.target_accuracy_before},
            "post": {"probability": result.p_target_after, "token_accuracy": result.target_accuracy}}


def _continuation(result) -> dict:
    """``pre``/``post``: the greedy continuations before and after the edit; ``verdict``: the
    studio's verdict on them; ``changed``: the verdict is not "same answer"."""
    return {"pre": result.before, "post": result.after, "changed": not result.unchanged,
            "verdict": result.verdict}


def edit_report(editor, request, max_new_tokens: int = 20) -> tuple[Any, dict]:
    """Make the edit of ``request`` and measure it; returns ``(edit, report)`` (report: JSON-able).

    The edit is measured exactly as the studio measures it
    (:func:`~instructedit.measuring.single.measure_edit` on the unedited model, fresh cache): the
    same continuations (the prompt as typed generated on its own, the rest in one batch), the same
    teacher-forced scores (``scores``: the plain and the paper protocol) and the same verdicts.
    ``changed`` means what the studio's verdict means: the two continuations do not give the
    same answer (verdict ``changed`` or ``now says <target>``; :mod:`instructedit.measuring.verdicts`),
    not merely that the texts differ. ``rephrases``: their continuations wrapped as the editor
    reads them (``wrapped``), and ``as_typed``: the rephrase as typed (the studio's rephrases).
    """
    from .measuring.probing import GenerationCache
    from .measuring.single import measure_edit

    if max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    backbone = editor.backbone
    edit = editor.edit(request)  # validates the request first: nothing is generated for bad input
    measured = measure_edit(backbone, edit, editor.use_instructions, [], max_new_tokens=max_new_tokens,
                            cache=GenerationCache())
    report = {
        "model_id": backbone.model_id,
        "quantization": backbone.config.quant,
        "editor": editor.name,
        "task": request.task,
        "instruction": request.instruction,
        "prompt": request.prompt,
        "target": request.target,
        "wrapped_input": edit.wrapped_input,
        "latency_ms": round(edit.latency_ms, 3),
        "continuation": _continuation(measured.prompt),
        "wrapped_continuation": _continuation(measured.wrapped),
        "target_scores": {"wrapped": target_scores(measured.wrapped), "raw": target_scores(measured.prompt)},
        "scores": measured.scores.to_dict(),
        "rephrases": [{"prompt": typed.prompt, "wrapped": wrapped.prompt, **_continuation(wrapped),
                       "as_typed": _continuation(typed)}
                      for typed, wrapped in zip(measured.rephrases, measured.wrapped_rephrases, strict=True)],
        "probes": [{"prompt": p.prompt, **_continuation(p)} for p in measured.probes],
        "patch": {"modules": sorted(edit.patch.layers), "nbytes": edit.patch.nbytes(),
                  "rank": max(layer.u.shape[0] for layer in edit.patch.layers.values())},
    }
    return edit, report


def _format_edit(report: dict) -> str:
    def sc(d: dict) -> str:
        return f"p={d['probability']:.4f} acc={d['token_accuracy']:.2f}"

    def pct(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    s = report["scores"]
    lines = [f"model     {report['model_id']} ({report['quantization']}), editor {report['editor']}",
             f"input     {report['wrapped_input']!r}",
             f"target    {report['target']!r}  ({report['latency_ms']:.0f} ms)",
             f"before    {report['continuation']['pre']!r}",
             f"after     {report['continuation']['post']!r}  ({report['continuation']['verdict']})"]
    for key in ("wrapped", "raw"):
        t = report["target_scores"][key]
        lines.append(f"{key:<9} {sc(t['pre'])} -> {sc(t['post'])}")
    lines.append(f"as typed  reliability {pct(s['plain_reliability'])}, generation success "
                 f"{pct(s['generation_success'])}, generalization {pct(s['plain_generalization'])}")
    lines.append(f"paper     reliability {pct(s['reliability'])}, generalization "
                 f"{pct(s['generalization'])}, locality {pct(s['locality'])}")
    for kind in ("rephrases", "probes"):
        for item in report[kind]:
            lines.append(f"{kind[:-1]:<9} {item['prompt']!r}: {item['pre']!r} -> {item['post']!r} "
                         f"({item['verdict']})")
    return "\n".join(lines)


def cmd_edit(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    backbone = backbone_from_args(args)
    editor = editor_from_args(args, backbone)
    _, report = edit_report(editor, request, args.max_new_tokens)
    print(json.dumps(report, ensure_ascii=False) if args.json else _format_edit(report))
    return 0


# ----- merge -----------------------------------------------------------------------------------
def register_merge(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge", help="make one edit and save a model with it merged into the weights",
        description="Compute one edit and write a standalone model folder (float weights, tokenizer "
                    "and instructedit-model.json) with the edit merged into its weights.")
    add_model_arguments(parser)
    add_editor_arguments(parser)
    add_request_arguments(parser)
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbose(parser)
    parser.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_patches

    request = request_from_args(args)
    backbone = backbone_from_args(args)
    editor = editor_from_args(args, backbone)
    edit = editor.edit(request)
    out = merge_patches(backbone, [edit], args.out, overwrite=args.overwrite)
    result = {"out": str(out), "model_id": backbone.model_id, "editor": editor.name,
              "wrapped_input": edit.wrapped_input, "modules": sorted(edit.patch.layers),
              "latency_ms": round(edit.latency_ms, 3)}
    print(json.dumps(result, ensure_ascii=False) if args.json else f"wrote the edited model to {out}")
    return 0


# ----- registry and entry point ----------------------------------------------------------------
REGISTRARS: list[Registrar] = [register_info, register_edit, register_merge]
"""Built-in registrations; other code may append to this list before :func:`build_parser`."""

COMMAND_MODULES: list[tuple[str, str]] = [
    ("instructedit.data.cli", "add_data_cli"),
    ("instructedit.train.cli", "register"),
    ("instructedit.evaluate.cli", "register"),
    ("instructedit.bench", "register"),
    ("instructedit.analysis_cli", "register"),
    ("instructedit.tracing_cli", "register"),
]
"""(module, function) of every command beyond info / edit / merge. Imported explicitly: a missing
dependency is an error, never a silently missing command. These modules keep torch and the model
code out of their top level (imported inside the command functions), so ``--help`` stays fast."""


def command_registrars() -> list[Registrar]:
    """The registration functions of :data:`COMMAND_MODULES`."""
    return [getattr(importlib.import_module(module), attr) for module, attr in COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    prog = SCRIPT if Path(sys.argv[0]).name == SCRIPT else PROG
    parser = OneLineArgumentParser(prog=prog, description="InstructEdit Studio: instruction-based "
                                   "knowledge editing of language models.")
    _add_verbose(parser, default=0)
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for register in [*REGISTRARS, *command_registrars()]:
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
        if isinstance(exc, _user_errors()):
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    return 0 if code is None else int(code)
