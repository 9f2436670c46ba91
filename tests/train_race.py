"""Wall time to a validation score, recipe against recipe, in one run: ``python -m tests.train_race``.

Trains each ``--recipe NAME=CONFIG.json`` in turn on this machine, fresh, each under the same
budget of ``--minutes`` of training time (steps, validations and the continuations generated up
front: the trainer's own clock, ``TrainConfig.max_minutes``), and reads each run's validations
(``metrics.jsonl``): when it first reached ``--target`` (default: the validation score recorded in
the shipped InstructEdit checkpoint), its best score and what it had seen by then. Runs go to
``--out-dir/NAME`` (checkpoints in ``ckpt``, logs in ``run``).

A recipe trained on another backbone dtype (``"dtype": "bfloat16"``) validates on that backbone
while it trains; its best checkpoint is validated again on the float32 backbone after the run
(``float32_score``), so its score compares with the float32 recipes'.

``--tiny`` races two small recipes on the test suite's tiny random model (seconds); ``--tiny
--tiny-bf16`` makes the second one train on a bfloat16 backbone.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

SHIPPED = Path("checkpoints/smollm2-135m/instructedit/editor.json")


def shipped_score(path: Path = SHIPPED) -> float:
    """The validation score recorded in a checkpoint's provenance."""
    return float(json.loads(path.read_text())["provenance"]["validation"]["score"])


def validations(run_dir: Path) -> list[dict]:
    """The validation rows of a run's ``metrics.jsonl``, in order."""
    file = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []
    return [r for r in rows if r.get("kind") == "val"]


def summarize(name: str, config, rows: Sequence[dict], target: float, setup_s: float) -> dict:
    """When a run first reached ``target`` and its best validation."""
    reached = next((r for r in rows if r["score"] >= target), None)
    best = max(rows, key=lambda r: r["score"]) if rows else None
    return {"name": name, "batch_size": config.batch_size, "editor_lr": config.editor_lr,
            "val_every": config.val_every, "setup_s": round(setup_s, 1),
            "steps_run": rows[-1]["step"] if rows else 0,
            "minutes_run": round(rows[-1]["wall_time_s"] / 60, 1) if rows else 0.0,
            "target": target,
            "reached_minutes": round(reached["wall_time_s"] / 60, 1) if reached else None,
            "reached_step": reached["step"] if reached else None,
            "reached_edits": reached["step"] * config.batch_size if reached else None,
            "best_score": round(best["score"], 4) if best else None,
            "best_step": best["step"] if best else None,
            "best_minutes": round(best["wall_time_s"] / 60, 1) if best else None,
            "curve": [(r["step"], round(r["wall_time_s"] / 60, 1), round(r["score"], 4)) for r in rows]}


def race(recipes: Sequence[tuple[str, object]], minutes: float, target: float, out_dir: Path,
         threads: int | None = None) -> list[dict]:
    """Train each (name, TrainConfig) for ``minutes`` and summarize its validations."""
    from instructedit.train.trainer import Trainer

    results = []
    for name, config in recipes:
        config = replace(config, max_minutes=minutes, threads=threads or config.threads,
                         steps=max(config.steps, 100_000), patience=max(config.patience, 1_000))
        run_dir = out_dir / name / "run"
        if (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
        started = time.perf_counter()
        trainer = Trainer(config, out_dir / name / "ckpt", run_dir)
        setup_s = time.perf_counter() - started
        trainer.train(command=f"python -m tests.train_race ({name})", resume=False)
        summary = summarize(name, config, validations(run_dir), target, setup_s)
        if config.dtype not in (None, "float32") and (out_dir / name / "ckpt" / "editor.json").is_file():
            summary["float32_score"] = float32_score(config, out_dir / name)
        results.append(summary)
    return results


def float32_score(config, folder: Path) -> float:
    """The validation score of the best checkpoint of a run trained on another backbone dtype,
    validated on the float32 backbone (the same records; what the other recipes' scores are)."""
    from instructedit.train.trainer import Trainer

    again = replace(config, dtype="float32", init_from=str(folder / "ckpt"))
    return round(float(Trainer(again, folder / "float32-check", folder / "float32-run").validate()["score"]), 4)


def markdown(results: Sequence[dict], minutes: float) -> str:
    """The race as a table (one row per recipe) and each run's validation curve."""
    lines = [f"Budget {minutes:g} minutes of training each (steps, validations, continuations); target "
             f"validation score {results[0]['target']:.3f}.", "",
             "| recipe | batch | editor lr | validate every | steps run | target reached | best score (step, minutes) | setup (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        reached = (f"after {r['reached_minutes']:.1f} min (step {r['reached_step']}, {r['reached_edits']} edits)"
                   if r["reached_minutes"] is not None else f"not in {r['minutes_run']:.1f} min")
        best = f"{r['best_score']} ({r['best_step']}, {r['best_minutes']})"
        if r.get("float32_score") is not None:
            best += f"; best checkpoint on the float32 backbone: {r['float32_score']}"
        lines.append(f"| {r['name']} | {r['batch_size']} | {r['editor_lr']:g} | {r['val_every']} | {r['steps_run']} | "
                     f"{reached} | {best} | {r['setup_s']} |")
    lines += ["", "Validation curves (step, minutes, score):", ""]
    lines += [f"- {r['name']}: " + ", ".join(f"({s}, {m}, {v:.3f})" for s, m, v in r["curve"]) for r in results]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from instructedit.train.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=CONFIG",
                        help="a recipe to race (repeat; default: the shipped recipe and docs/recipes/r4-fast-b8.json)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per recipe (default 20)")
    parser.add_argument("--target", type=float, default=None,
                        help="validation score to reach (default: the shipped InstructEdit checkpoint's)")
    parser.add_argument("--out-dir", default="runs/race", help="where the runs go (default runs/race)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny random model")
    parser.add_argument("--tiny-bf16", action="store_true", help="with --tiny: the second recipe on a bf16 backbone")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.tiny:
        from tests.data.layout import make_data_dir
        from tests.tiny_models import build_tiny_model

        tmp = Path(tempfile.mkdtemp(prefix="instructedit-race-"))
        base = TrainConfig(model=str(build_tiny_model("llama", tmp / "model")), data=str(make_data_dir(tmp / "data")),
                           batch_size=2, rank=8, pool_per_task=8, val_per_task=3, val_every=4, last_n_layers=2,
                           max_answer_tokens=8, editor_lr=3e-3, step_size_lr=3e-2, init_lr=1e-3)
        second = replace(base, dtype="bfloat16") if args.tiny_bf16 else replace(base, batch_size=4, val_every=2)
        recipes = [("tiny-b2", base), ("tiny-bf16" if args.tiny_bf16 else "tiny-b4", second)]
    else:
        specs = args.recipe or ["shipped=docs/recipes/r4-mid9-pre.json", "fast-b8=docs/recipes/r4-fast-b8.json"]
        recipes = []
        for spec in specs:
            name, _, path = spec.partition("=")
            if not path:
                parser.error(f"--recipe {spec!r}: write NAME=CONFIG.json")
            recipes.append((name, TrainConfig.from_file(path)))
    target = args.target if args.target is not None else (0.0 if args.tiny else shipped_score())
    results = race(recipes, args.minutes, target, Path(args.out_dir), args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    sys.stdout.write(markdown(results, args.minutes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
