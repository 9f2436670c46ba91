"""InstructEdit Studio: the web app. Run ``python app.py --help`` for the options.

Loads the model and the editors once, shares them between all visitors, and gives every browser
session its own stack of edits. Also the entry point of the Hugging Face Space (``app_file``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from instructedit.defaults import QUANT_MODES

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from instructedit.cli.common import add_patch_rank_argument, trained_patch_rank  # noqa: E402
from instructedit.cli.fields import Option, add_fields, build_config  # noqa: E402
from instructedit.logs import setup_logging  # noqa: E402
from instructedit.web.config import (  # noqa: E402
    COMPARE_CHOICES,
    AppConfig,
    Limits,
)

log = logging.getLogger("instructedit.app")


APP_OPTIONS = {
    "quant": Option(choices=QUANT_MODES),
    "compare": Option(choices=COMPARE_CHOICES),
    "edit_rekey": Option(choices=("on", "off")),
    "data_dir": Option(flag="--data", type=lambda text: None if text.strip().lower() == "none" else Path(text)),
}
"""Where a flag differs from the one ``add_fields`` derives from its AppConfig field."""
LIMIT_OPTIONS = {"idle_timeout_s": Option(flag="--idle-timeout"), "batch_window_ms": Option(metavar="MS")}
"""Where a flag differs from the one ``add_fields`` derives from its Limits field."""


def build_parser() -> argparse.ArgumentParser:
    """One flag per field of AppConfig (but ``limits``; ``--patch-rank`` as the command line's) and of
    Limits."""
    p = argparse.ArgumentParser(
        prog="python app.py",
        description="InstructEdit Studio: edit a language model's knowledge with instructions, in the "
                    "browser. One server, many users: the model and editors are shared, each browser "
                    "session's edits are its own.",
    )
    g = p.add_argument_group("model and editors")
    added = add_fields(g, AppConfig, include=("model", "quant", "device", "fast_4bit", "editor", "baseline_editor",
                                            "compare"),
                       options=APP_OPTIONS)
    add_patch_rank_argument(g)
    added += add_fields(g, AppConfig, include=("data_dir",), options=APP_OPTIONS)
    g = p.add_argument_group("server")
    added += add_fields(g, AppConfig, include=("host", "port", "share"))
    g = p.add_argument_group("limits (for a shared server)")
    add_fields(g, Limits, options=LIMIT_OPTIONS)
    added += add_fields(g, AppConfig, include=("threads",))
    g = p.add_argument_group("other settings")
    add_fields(g, AppConfig, exclude=(*added, "limits", "patch_rank"), options=APP_OPTIONS)
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v, -vv)")
    return p


def config_from_args(args: argparse.Namespace) -> AppConfig:
    return build_config(AppConfig, args, limits=build_config(Limits, args), patch_rank=trained_patch_rank(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, level=logging.INFO, timestamps=True)
    start = time.perf_counter()
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    from transformers.utils import logging as hf_logging

    from instructedit.editing.checkpoint import CheckpointError
    from instructedit.model.backbone import BackboneError
    from instructedit.web.loading import load_models, status_line

    hf_logging.disable_progress_bar()
    import torch

    from instructedit.web.config import cpu_threads

    torch.set_num_threads(cpu_threads(config))
    try:
        models = load_models(config)
    except (BackboneError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("model and editors loaded in %.1f s", models.seconds)

    from instructedit.web.app import build_demo, launch
    from instructedit.web.blast import BlastPlanner, load_neighbour_indexes
    from instructedit.web.pages import load_results
    from instructedit.web.service import EditService

    blast = BlastPlanner(indexes=load_neighbour_indexes(config.data_dir))
    service = EditService(models.backbone, models.editor, models.baseline, config.limits, blast=blast,
                          rome=models.rome)
    demo = build_demo(service, status_line(models), load_results(config.results_file, config.figures_dir))
    _, local_url, share_url = launch(demo, config, prevent_thread_lock=True, quiet=True)
    log.info("InstructEdit Studio listening on %s (ready %.1f s after start)%s", local_url,
             time.perf_counter() - start, f"; public link {share_url}" if share_url else "")
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
