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
from dataclasses import replace
from pathlib import Path

from instructedit.defaults import QUANT_MODES

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from instructedit.cli.common import add_patch_rank_argument, trained_patch_rank  # noqa: E402
from instructedit.logs import setup_logging  # noqa: E402
from instructedit.web.config import (  # noqa: E402
    COMPARE_CHOICES,
    AppConfig,
    Limits,
    default_host,
    default_port,
)

log = logging.getLogger("instructedit.app")


def build_parser() -> argparse.ArgumentParser:
    defaults, limits = AppConfig(), Limits()
    p = argparse.ArgumentParser(
        prog="python app.py",
        description="InstructEdit Studio: edit a language model's knowledge with instructions, in the "
                    "browser. One server, many users: the model and editors are shared, each browser "
                    "session's edits are its own.",
    )
    g = p.add_argument_group("model and editors")
    g.add_argument("--model", default=defaults.model,
                   help="model alias (smollm2-135m: the embedded SmolLM2-135M-Instruct), local model "
                        "folder or Hugging Face hub id (default: %(default)s)")
    g.add_argument("--quant", choices=QUANT_MODES, default=None,
                   help="bitsandbytes quantization of the model (default: 4bit on CPU, none on a GPU)")
    g.add_argument("--device", default=defaults.device, help="cpu, cuda or auto (default: %(default)s)")
    g.add_argument("--editor", default=defaults.editor,
                   help="InstructEdit editor checkpoint folder, or 'none' for one plain gradient step; "
                        "if the shipped checkpoint is missing the app falls back to a plain gradient "
                        "step and says so in its status line (default: the shipped "
                        "checkpoints/smollm2-135m/instructedit)")
    g.add_argument("--baseline-editor", default=defaults.baseline_editor,
                   help="editor shown next to InstructEdit for comparison (the multi-task MEND trained "
                        "without instructions), or 'none' to hide the comparison; 'rome' is the same as "
                        "--compare rome (default: the shipped checkpoints/smollm2-135m/mend-multitask)")
    g.add_argument("--compare", choices=COMPARE_CHOICES, default=defaults.compare,
                   help="editors shown next to InstructEdit: the baseline (--baseline-editor), ROME "
                        "(rank-one locate-and-edit of one MLP at the edit's subject; a few seconds an edit "
                        "on a CPU, shown after InstructEdit's result), both, or none (default: %(default)s)")
    add_patch_rank_argument(g)
    g.add_argument("--data", default=str(defaults.data_dir),
                   help="benchmark data folder: its test splits give the blast radius the same-template "
                        "neighbours of an example's sentence; 'none' or a missing folder: built-in "
                        "subject lists only (default: the checkout's data/)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default=default_host(),
                   help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: the network; default: %(default)s)")
    g.add_argument("--port", type=int, default=default_port(), help="port to listen on (default: %(default)s)")
    g.add_argument("--share", action="store_true",
                   help="also open a temporary public *.gradio.live link (off by default)")
    g = p.add_argument_group("limits (for a shared server)")
    g.add_argument("--max-new-tokens", type=int, default=limits.max_new_tokens,
                   help="tokens generated for every continuation shown (and the Playground's maximum) (default: %(default)s)")
    g.add_argument("--max-edits-per-session", type=int, default=limits.max_edits_per_session,
                   help="active edits one browser session may hold (default: %(default)s)")
    g.add_argument("--queue-size", type=int, default=limits.queue_size,
                   help="requests that may wait for the model; more are turned away with a message (default: %(default)s)")
    g.add_argument("--concurrency-limit", type=int, default=limits.concurrency_limit,
                   help="model requests (edit, import, generate) that run at the same time (default: %(default)s)")
    g.add_argument("--max-input-chars", type=int, default=limits.max_input_chars,
                   help="longest prompt, target, instruction, topic or list line accepted (default: %(default)s)")
    g.add_argument("--idle-timeout", type=float, default=limits.idle_timeout_s,
                   help="seconds after which an unused session's edits are forgotten (default: %(default)s)")
    g.add_argument("--batch-window-ms", type=float, default=limits.batch_window_ms, metavar="MS",
                   help="batch generation calls of different sessions that arrive within MS milliseconds "
                        "into one model call, each row under its own session's edits (0: only calls "
                        "that queue while the model is busy); calls without edits always run on their "
                        "own (default: off)")
    g.add_argument("--batch-max-rows", type=int, default=limits.batch_max_rows,
                   help="most prompts in one batched generation call (default: %(default)s)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per request (default: CPU cores / concurrency limit, so "
                        "concurrent requests do not fight over the cores)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v, -vv)")
    return p


def config_from_args(args: argparse.Namespace) -> AppConfig:
    limits = Limits(max_new_tokens=args.max_new_tokens, max_edits_per_session=args.max_edits_per_session,
                    queue_size=args.queue_size, concurrency_limit=args.concurrency_limit,
                    max_input_chars=args.max_input_chars, idle_timeout_s=args.idle_timeout,
                    batch_window_ms=args.batch_window_ms, batch_max_rows=args.batch_max_rows)
    return replace(AppConfig(), model=args.model, quant=args.quant, device=args.device,
                   editor=args.editor, baseline_editor=args.baseline_editor, compare=args.compare,
                   patch_rank=trained_patch_rank(args), host=args.host,
                   data_dir=None if args.data.strip().lower() == "none" else Path(args.data),
                   port=args.port, share=args.share, limits=limits, threads=args.threads)


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
