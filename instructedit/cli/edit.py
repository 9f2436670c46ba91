"""``python -m instructedit edit`` (make one edit and measure it as the studio does) and
``python -m instructedit merge`` (make one edit and save a model with it merged into its weights).

The model, editing and measuring layers are imported inside the command functions (``--help``
stays free of torch).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..editing.schedule import EditSchedule
from .common import (
    CliError,
    add_editor_arguments,
    add_model_arguments,
    add_request_arguments,
    add_verbose,
    backbone_from_args,
    editor_from_args,
    request_from_args,
)


def register(subparsers) -> None:
    """Add the ``edit`` and ``merge`` subcommands."""
    register_edit(subparsers)
    register_merge(subparsers)


def register_edit(subparsers) -> None:
    """Add the ``edit`` subcommand."""
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
    add_verbose(parser)
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
    from ..measuring.probing import GenerationCache
    from ..measuring.single import measure_edit

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
        "subject": request.subject,
        "keyed_on_subject": bool(getattr(editor, "keyed_on_subject", False)),
        "edit_schedule": editor.schedule.to_dict() if hasattr(editor, "schedule") else None,
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
             *([f"subject   {report['subject']!r} (the update is keyed on its tokens)"]
               if report["keyed_on_subject"] and report["subject"] else []),
             *([f"schedule  {EditSchedule.from_dict(report['edit_schedule']).describe()}"]
               if report["edit_schedule"] and report["edit_schedule"] != {"steps": 1, "strength": 1.0} else []),
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



def register_merge(subparsers) -> None:
    """Add the ``merge`` subcommand."""
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
    add_verbose(parser)
    parser.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from ..editing.merge import merge_patches

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
