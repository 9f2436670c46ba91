"""What one meta-training step costs and what bounds it: ``python -m tests.train_profile``.

Builds the trainer of a recipe (default: the shipped InstructEdit editor's, ``docs/recipes/
r4-mid9-pre.json``) on the real embedded model and, on the same batches, in one run:

- times a warm step (meta step, backward, clipping, Adam: what the training loop does) with each
  forward's rows grouped by length and with one forward per kind of text (edit inputs,
  rephrases, locality texts, ...; the numbers are equal, tested in ``tests/test_train.py``), interleaved;
- counts the tokens each pass runs (real, and padded under each layout) and turns them into a
  lower bound: FLOPs of the passes (2 x parameters of the blocks from the first edited one up, per
  token; the backward of a gradient pass about as much again; the output head at scored
  positions) over the measured float32 matmul throughput;
- times the unedited continuations the continuation KL needs: generated per step (4 prefixes a
  call, as the loop did) against all of a run's records up front in batches of 32.

``--tiny`` runs it on the test suite's tiny random model and data (seconds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path


def _pass_tokens(batches, weights, pad_id: int) -> dict:
    """Real and padded tokens of each pass of a step, under both layouts."""
    from instructedit.editing.editor import keyed_batch
    from instructedit.scoring import length_buckets
    from instructedit.train.step import step_parts

    sources, _, _ = keyed_batch(batches.sources, pad_id)
    parts = step_parts(batches, weights, pad_id)
    held, edited = parts.held, parts.edited

    def tokens(parts) -> dict:
        lengths = [n for p in parts for n in p.attention_mask.sum(1).tolist()]
        grouped = sum(len(g) * lengths[g[0]] for g in length_buckets(lengths))
        per_kind = sum(p.size * max(p.attention_mask.sum(1).tolist()) for p in parts)
        return {"real": sum(lengths), "grouped": grouped, "per_kind": per_kind,
                "scored": sum(p.answer_tokens.numel() for p in parts)}

    patch = tokens([sources])
    patch["per_kind"] = sources.size * sources.input_ids.shape[1]  # before: one forward
    return {"edit gradients (no patch)": patch, "held texts before (no gradient)": tokens(held),
            "every text after the edit": tokens(edited + held)}


def flop_bound_seconds(passes: dict, top_parameters: int, head_flops_per_position: int,
                       flops_per_s: float, layout: str) -> float:
    """Lower bound of a step's seconds from its passes' tokens under ``layout`` (see module doc)."""
    total = 0.0
    for name, t in passes.items():
        factor = 1 if "no gradient" in name else 2  # a gradient pass: forward + input-gradient backward
        total += factor * (2 * top_parameters * t[layout] + head_flops_per_position * t["scored"])
    return total / flops_per_s


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def profile(recipe: str | None, batches_n: int, repeats: int, threads: int | None, tiny: bool,
            batch_size: int | None = None) -> dict:
    import torch

    from instructedit.bench.gen_speed import matmul_throughput
    from instructedit.bench.training import train_step
    from instructedit.train.config import TrainConfig
    from instructedit.train.continuations import ContinuationCache
    from instructedit.train.step import tokenize_examples
    from instructedit.train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="instructedit-train-profile-"))
    if tiny:
        from tests.data.layout import make_data_dir
        from tests.tiny_models import build_tiny_model

        config = TrainConfig(model=str(build_tiny_model("llama", tmp / "model")), data=str(make_data_dir(tmp / "data")),
                             batch_size=2, rank=8, pool_per_task=8, last_n_layers=2, max_answer_tokens=8,
                             continuation_kl_tokens=3, plain_loss=True, neighbour_locality=True,
                             kl_all_positions=True)
    else:
        config = TrainConfig.from_file(recipe or "docs/recipes/r4-mid9-pre.json")
    config = replace(config, val_per_task=1, steps=batches_n, threads=threads,
                     batch_size=batch_size or config.batch_size)
    started = time.perf_counter()
    trainer = Trainer(config, tmp / "ckpt", tmp / "run")
    setup_s = time.perf_counter() - started
    stream = trainer._stream()
    examples = [trainer.batch_at(i, stream) for i in range(batches_n)]  # fills the continuations
    result: dict = {"recipe": "tiny" if tiny else (recipe or "docs/recipes/r4-mid9-pre.json"), "batch_size": config.batch_size,
                    "batches": batches_n, "repeats": repeats, "threads": torch.get_num_threads(),
                    "setup_s": round(setup_s, 1)}
    if trainer.continuations is not None:
        prefixes = [e.continuation_prefix for batch in examples for e in batch]
        step_wise, up_front = (ContinuationCache(trainer.backbone, config.continuation_kl_tokens)
                               for _ in range(2))
        started = time.perf_counter()
        for batch in examples:
            step_wise.fill(batch)
        per_step_s = time.perf_counter() - started
        started = time.perf_counter()
        up_front.prefill(prefixes, 32)
        prefill_s = time.perf_counter() - started
        result["continuations"] = {"prefixes": len(set(prefixes)), "per_step_s": round(per_step_s, 2),
                                   "up_front_s": round(prefill_s, 2),
                                   "per_step_s_per_step": round(per_step_s / batches_n, 3)}
    for batch in examples:  # warm: the cached lower-block states, the allocator
        train_step(trainer, batch)
    seconds: dict[str, list[float]] = {"grouped": [], "per_kind": []}
    for _ in range(repeats):
        for batch in examples:
            for layout in ("grouped", "per_kind"):
                trainer.config = replace(trainer.config, group_rows_by_length=layout == "grouped")
                seconds[layout].append(train_step(trainer, batch))
    trainer.config = replace(trainer.config, group_rows_by_length=True)
    tok = trainer.backbone.tokenizer
    pad = tok.pad_token_id or 0
    passes = [_pass_tokens(tokenize_examples(tok, trainer.network, batch, config.max_answer_tokens,
                                             trainer.weights), trainer.weights, pad) for batch in examples]
    mean_passes = {name: {k: sum(p[name][k] for p in passes) / len(passes) for k in passes[0][name]}
                   for name in passes[0]}
    model = trainer.backbone.model
    start = trainer.forward.start if hasattr(trainer.forward, "start") else 0
    blocks = trainer.backbone.adapter.blocks(model)
    top = sum(p.numel() for block in list(blocks)[start:] for p in block.parameters())
    head = model.get_output_embeddings().weight
    flops_per_s = matmul_throughput(torch.float32)
    result.update({
        "step_s": {k: round(_median(v), 3) for k, v in seconds.items()},
        "step_s_all": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "speedup": round(_median(seconds["per_kind"]) / _median(seconds["grouped"]), 3),
        "passes": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in mean_passes.items()},
        "top_parameters": top, "first_cached_block": start, "matmul_gflops": round(flops_per_s / 1e9, 1),
        "bound_s": {layout: round(flop_bound_seconds(mean_passes, top, 2 * head.numel(), flops_per_s, layout), 3)
                    for layout in ("real", "grouped", "per_kind")},
    })
    return result


def markdown(result: dict) -> str:
    """The profile as the tables docs/training.md shows."""
    lines = [f"Recipe `{result['recipe']}`, batch {result['batch_size']}, {result['batches']} batches x "
             f"{result['repeats']} timed passes, {result['threads']} threads; first cached block "
             f"{result['first_cached_block']}, {result['top_parameters'] / 1e6:.1f} M parameters from there up; "
             f"float32 matmul {result['matmul_gflops']} GFLOP/s.", "",
             "| pass | real tokens | padded, grouped by length | padded, one forward per kind | scored positions |",
             "|---|---|---|---|---|"]
    for name, t in result["passes"].items():
        lines.append(f"| {name} | {t['real']:.0f} | {t['grouped']:.0f} | {t['per_kind']:.0f} | {t['scored']:.0f} |")
    s, b = result["step_s"], result["bound_s"]
    lines += ["", "| layout | seconds per step (median) | FLOP bound (s) | share of the step at the bound |",
              "|---|---|---|---|",
              f"| one forward per kind of text | {s['per_kind']:.2f} | {b['per_kind']:.2f} | {b['per_kind'] / s['per_kind']:.0%} |",
              f"| rows grouped by length | {s['grouped']:.2f} | {b['grouped']:.2f} | {b['grouped'] / s['grouped']:.0%} |",
              f"| no padding at all (bound only) | | {b['real']:.2f} | |",
              "", f"Step speed-up: **{result['speedup']:.2f}x**."]
    c = result.get("continuations")
    if c:
        lines += ["", f"Unedited continuations of the {c['prefixes']} prefixes of these batches: "
                      f"{c['per_step_s']:.1f} s generated step by step ({c['per_step_s_per_step']:.2f} s a step), "
                      f"{c['up_front_s']:.1f} s up front in batches of 32."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=None, help="a training config (default docs/recipes/r4-mid9-pre.json)")
    parser.add_argument("--batches", type=int, default=4, help="batches timed (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over them (default 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="edits per step (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny random model")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = profile(args.recipe, args.batches, args.repeats, args.threads, args.tiny, args.batch_size)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
