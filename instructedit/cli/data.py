"""The ``data`` command group: ``data stats --data DIR [--tokenizer-model M] [--json]`` and
``data fetch --out DIR [--tasks ...] [--force]`` (download the benchmark files from the hub).

The main CLI calls :func:`register` with its subparsers; each leaf parser sets ``func`` to a
handler ``(args) -> exit code``. The data layer (:mod:`instructedit.data`) is torch-free and imported
at the top; a tokenizer is loaded only when ``--tokenizer-model`` asks for one.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..data.examples import DEFAULT_PATH as EXAMPLES_FILE
from ..data.examples import write_examples
from ..data.fetch import DEFAULT_REVISION, FetchError, fetch_data, format_results
from ..data.records import RecordError
from ..data.sentiment import DEFAULT_PATH as LEXICON_FILE
from ..data.sentiment import build
from ..data.stats import compute_stats
from ..data.tasks import DEFAULT_DATA_DIR, TASKS, SplitError

log = logging.getLogger(__name__)


def load_tokenizer_for_stats(model: str) -> Any:
    """A tokenizer from a local folder (or a ``.gguf`` file), imported only when asked for.

    Other names (an alias, a hub id) go through :mod:`instructedit.model.backbone`.
    """
    path = Path(model).expanduser()
    if not path.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise FileNotFoundError(f"{model}: no such model folder or file")
    from transformers import AutoTokenizer

    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path))
    from ..model.backbone import load_tokenizer, resolve_source

    return load_tokenizer(resolve_source(model)[1])


def run_stats(args: argparse.Namespace) -> int:
    """Handler of ``data stats``: 0 when leak-free, 1 on leakage, 2 when data is unusable."""
    tokenizer = None
    if args.tokenizer_model:
        try:
            tokenizer = load_tokenizer_for_stats(args.tokenizer_model)
        except Exception as err:  # noqa: BLE001 - any loading failure is reported the same way
            print(f"error: cannot load tokenizer {args.tokenizer_model!r}: {err}", file=sys.stderr)
            return 2
    try:
        stats = compute_stats(args.data, tokenizer, seed=args.seed, tasks=args.tasks,
                              include_knowedit=args.include_knowedit)
    except (SplitError, RecordError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats.to_dict(), indent=1))
    else:
        print(stats.format_text())
    return 1 if stats.leak else 0


def run_fetch(args: argparse.Namespace) -> int:
    """Handler of ``data fetch``: 0 when every file is in place and readable, 2 otherwise."""
    if not getattr(args, "verbose", 0):  # no progress bars, and no retry notes before the error line
        from huggingface_hub.utils import disable_progress_bars
        from huggingface_hub.utils import logging as hub_logging

        disable_progress_bars()
        hub_logging.set_verbosity_error()
    try:
        results = fetch_data(args.out, tasks=args.tasks, revision=args.revision, force=args.force)
    except (FetchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        print(format_results(results, args.out))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``data`` command (``stats``, ``fetch``, ``examples``, ``lexicon``) to an argparse
    subparsers object."""
    data = subparsers.add_parser("data", help="get and inspect the editing datasets",
                                 description="Get and inspect the editing datasets.")
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND")
    commands.required = True
    stats = commands.add_parser(
        "stats", help="counts per task/split, answer lengths and leakage checks",
        description="Counts per task and split, answer lengths and leakage checks. "
                    "Exit code 1 when training data leaks into val/test or zsre.")
    stats.add_argument("--data", default=DEFAULT_DATA_DIR,
                       help="data folder laid out as in docs/data.md (default: %(default)s)")
    stats.add_argument("--tokenizer-model", default=None, metavar="M",
                       help="measure answers in this tokenizer's tokens (a local model folder "
                            "or .gguf file); default: whitespace words")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    stats.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                       help="tasks to include (default: all)")
    stats.add_argument("--include-knowedit", action="store_true",
                       help="add counterfact/knowedit-train_cf.json to CounterFact training")
    stats.set_defaults(func=run_stats)
    fetch = commands.add_parser(
        "fetch", help="download the benchmark files from the Hugging Face hub",
        description="Download the benchmark files (KnowEdit and the EasyEdit CounterFact splits) "
                    "from the Hugging Face hub, check that each parses with this project's loaders "
                    "and lay them out as docs/data.md describes. Honours HF_ENDPOINT (a mirror). "
                    "Exit code 2 when a file cannot be downloaded or read.")
    fetch.add_argument("--out", default=DEFAULT_DATA_DIR,
                       help="data folder to fill (default: %(default)s)")
    fetch.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                       help="tasks whose files to fetch (default: all)")
    fetch.add_argument("--revision", default=DEFAULT_REVISION,
                       help="hub revision (branch, tag or commit) of every source (default: %(default)s)")
    fetch.add_argument("--force", action="store_true",
                       help="download again files that are already present and readable")
    fetch.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fetch.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="log more, with progress bars and the hub library's retries")
    fetch.set_defaults(func=run_fetch)
    examples = commands.add_parser(
        "examples", help="rebuild the studio's example edits from the test splits",
        description="Rebuild instructedit/assets/examples.json from the data's test splits.")
    examples.add_argument("--data", default=DEFAULT_DATA_DIR, help="data folder (default: %(default)s)")
    examples.add_argument("--out", default=None, help="output file (default: the shipped examples file)")
    examples.set_defaults(func=run_examples)
    lexicon = commands.add_parser(
        "lexicon", help="train the ConvSent sentiment scorer (bag-of-words lexicon)",
        description="Train the ConvSent sentiment scorer and write its weights.")
    lexicon.add_argument("--data", default=DEFAULT_DATA_DIR, help="data folder (default: %(default)s)")
    lexicon.add_argument("--out", default=None, help="where to write the weights (default: the shipped lexicon)")
    lexicon.add_argument("--seed", type=int, default=0, help="ConvSent split seed (default: %(default)s)")
    lexicon.add_argument("--top-n", type=int, default=6000, help="features kept (default: %(default)s)")
    lexicon.add_argument("--l2", type=float, default=3e-5, help="L2 penalty (default: %(default)s)")
    lexicon.set_defaults(func=run_lexicon)
    return data


def run_examples(args: argparse.Namespace) -> int:
    """Handler of ``data examples``."""
    out, count = write_examples(args.data, args.out or EXAMPLES_FILE)
    print(f"wrote {out}: {count} examples, {out.stat().st_size / 1024:.1f} KiB")
    return 0


def run_lexicon(args: argparse.Namespace) -> int:
    """Handler of ``data lexicon``."""
    out = args.out or str(LEXICON_FILE)
    scorer, accuracy = build(args.data, out, seed=args.seed, top_n=args.top_n, l2=args.l2)
    print(f"wrote {out} ({len(scorer.weights)} features, {Path(out).stat().st_size / 1024:.0f} KiB)")
    for split, value in accuracy.items():
        print(f"accuracy on convsent {split}: {value:.4f}")
    return 0
