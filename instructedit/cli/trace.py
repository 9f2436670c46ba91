"""The ``trace`` command: causal tracing of one prompt, or averaged over records to choose ROME's layer.

``python -m instructedit trace --prompt P --subject S [--answer A] [--out heatmap.png] [--json]``
prints a table per kind (rows: tokens, columns: layers) and a one-line reading;
``python -m instructedit trace --records data/counterfact --limit 20`` averages the indirect
effects over the first 20 "known" facts (the model predicts the true answer) of the task's test
records in a seeded order, restoring only the last subject token with MLP/attention windows of
about a sixth of the depth, and prints the best layer for MLP restoration at the last subject
token, and the same leaving out the first MLP: the layer ROME should edit
(:data:`instructedit.editing.rome.TRACED_LAYERS`).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ..data.formats import load_records
from ..data.records import RecordError
from ..data.tasks import TASKS, SplitError, load_split
from ..defaults import TRACE_KINDS as KINDS
from .common import CliError, add_model_arguments, add_verbose, backbone_from_args

AUTO = "auto"


def register(subparsers) -> None:
    """Add the ``trace`` subcommand."""
    p = subparsers.add_parser(
        "trace", help="causal tracing: which layers and tokens carry a fact",
        description="Corrupt the subject's token embeddings with noise and restore, one at a time, "
                    "each layer's hidden state, MLP output and attention output at each token; print "
                    "how much of the answer's probability each restores (Meng et al. 2022). With "
                    "--records, average over records and print the best layer for ROME.")
    add_model_arguments(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt to trace")
    source.add_argument("--records", help="a task's data folder (e.g. data/counterfact) or a records "
                                          "file: average over its records")
    p.add_argument("--subject", help="the subject in --prompt (required with --prompt)")
    p.add_argument("--answer", default=None,
                   help="the answer whose first token is traced (default: the greedy next token)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split of a --records data folder (default: %(default)s)")
    p.add_argument("--limit", type=int, default=20, help="records traced with --records (default: %(default)s)")
    p.add_argument("--answers", default="known", choices=("known", "ground_truth", "greedy"),
                   help="with --records: trace only records whose true answer the model predicts "
                        "(known, the paper's choice), the true answer, or the model's greedy token "
                        "(default: %(default)s)")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="comma-separated kinds to restore: hidden, mlp, attn (default: %(default)s)")
    p.add_argument("--tokens", default=AUTO, choices=(AUTO, "all", "last_subject"),
                   help="positions restored: all, or only the last subject token (much faster; "
                        "default: all with --prompt, last_subject with --records)")
    p.add_argument("--samples", type=int, default=10, help="noise samples (default: %(default)s)")
    p.add_argument("--noise", type=float, default=3.0,
                   help="noise std in units of the embeddings' std (default: %(default)s)")
    p.add_argument("--window", type=int, default=None,
                   help="MLP/attention layers restored together, centred on each layer (default: 1 "
                        "with --prompt; with --records about a sixth of the model's depth, as the "
                        "paper's 10 of GPT-2 XL's 48 layers)")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise and the record sample")
    p.add_argument("--out", default=None, help="PNG heatmap to write")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_verbose(p)
    p.set_defaults(func=cmd_trace)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise CliError(f"--kinds must list some of {', '.join(KINDS)}; got {text!r}")
    return kinds


def load_trace_records(path: str, split: str, seed: int) -> list:
    """The records with a subject of a task folder or a records file, in a seeded order."""
    folder = Path(path)
    try:
        if folder.is_dir():
            if folder.name not in TASKS:
                raise CliError(f"--records {path}: a folder must be a task's data folder "
                               f"({', '.join(TASKS)}), e.g. data/counterfact")
            records = load_split(folder.parent, folder.name, split, seed)
        elif folder.is_file():
            records = load_records(folder)
        else:
            raise CliError(f"--records {path}: no such folder or file")
    except (SplitError, RecordError, ValueError) as exc:
        raise CliError(f"--records {path}: {exc}") from exc
    records = [r for r in records if r.subject.strip()]
    if not records:
        raise CliError(f"--records {path}: no record has a subject")
    random.Random(f"trace:{seed}").shuffle(records)
    return records


def cmd_trace(args: argparse.Namespace) -> int:
    from ..tracing import average_indirect_effect, format_table, save_heatmap, trace

    kinds = _kinds(args.kinds)
    for name in ("samples", "limit", "window"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CliError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.noise > 0:
        raise CliError(f"--noise must be positive, got {args.noise}")
    if args.prompt is not None and not (args.subject and args.subject.strip()):
        raise CliError("--subject is required with --prompt (the entity the fact is about)")
    options = {"samples": args.samples, "noise": args.noise, "seed": args.seed, "kinds": kinds}
    if args.prompt is not None:
        tokens = "all" if args.tokens == AUTO else args.tokens
        backbone = backbone_from_args(args)
        result = trace(backbone, args.prompt, args.subject, args.answer, tokens=tokens,
                       window=args.window or 1, **options)
        report = result.to_dict()
    else:
        tokens = "last_subject" if args.tokens == AUTO else args.tokens
        records = load_trace_records(args.records, args.split, args.seed)
        backbone = backbone_from_args(args)
        window = args.window or max(1, round(backbone.adapter.num_layers(backbone.model) / 6))
        result = average_indirect_effect(backbone, records, tokens=tokens, answers=args.answers,
                                         limit=args.limit, window=window, **options)
        report = result.to_dict()
        report["model_id"] = backbone.model_id
    if args.out:
        report["figure"] = str(save_heatmap(result, args.out))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    print(format_table(result))
    if args.prompt is None and "mlp" in kinds:
        print(f"\nbest layer for MLP restoration at the last subject token (window {result.window}): "
              f"{report['best_layer']['mlp']}; leaving out the first MLP (part of the token "
              f"embedding): {report['rome_layer']}, ROME's layer for {backbone.model_id}")
    if args.out:
        print(f"heatmap written to {report['figure']}")
    return 0
