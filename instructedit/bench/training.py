"""Section 5: steps/s of the cached meta-training step against the full-model step.

Both use the project's trainer (:class:`~instructedit.train.trainer.Trainer`: its step, network,
optimizer and data) on the same batches; only the forward provider differs
(:class:`CachedTopForward` with a warm cache vs :class:`FullForward`). A step is what the
training loop does: the meta step, backward, gradient clipping and the Adam update. The cached
step is also broken down (top-block forwards, editor network, outer backward, optimizer, rest)
and profiled when the goal is missed.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from ..data.mixing import iter_mixed
from ..model.backbone import Backbone
from ..model.forward import CachedTopForward, FullForward
from ..train.config import TrainConfig
from ..train.examples import TrainingExample
from ..train.trainer import Trainer
from .profiling import top_ops
from .stats import Stopwatch, ratio, summarize

log = logging.getLogger(__name__)


class StepTimer:
    """Times the parts of a training step by wrapping the trainer's forward and editor network."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.forward = Stopwatch()
        self.network = Stopwatch()
        self.backward = Stopwatch()
        self.optimizer = Stopwatch()
        self.total = Stopwatch()
        self.active = False  # only the timed cached steps count
        transform = trainer.network.transform

        def timed_transform(*args, **kwargs):
            if not self.active:
                return transform(*args, **kwargs)
            with self.network.running():
                return transform(*args, **kwargs)

        trainer.network.transform = timed_transform  # instance attribute: this trainer only

    def wrap_forward(self, provider):
        def timed_forward(batch):
            with self.forward.running():
                return provider(batch)
        return timed_forward

    def reset(self) -> None:
        for watch in (self.forward, self.network, self.backward, self.optimizer, self.total):
            watch.seconds, watch.calls = 0.0, 0


def train_step(trainer: Trainer, examples: Sequence[TrainingExample], timer: StepTimer | None = None) -> float:
    """One training step as :meth:`Trainer.train` runs it; returns its seconds."""
    start = time.perf_counter()
    result = trainer.run_step(examples)
    trainer.optimizer.zero_grad(set_to_none=True)
    if timer:
        with timer.backward.running():
            result.loss.backward()
    else:
        result.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), trainer.config.grad_clip)
    if timer:
        with timer.optimizer.running():
            if torch.isfinite(grad_norm):
                trainer.optimizer.step()
    elif torch.isfinite(grad_norm):
        trainer.optimizer.step()
    return time.perf_counter() - start


def make_trainer(backbone: Backbone, data: str, pool_per_task: int, seed: int, run_dir: str) -> Trainer:
    config = replace(TrainConfig(), model=backbone.model_id, quant=backbone.config.quant, data=data,
                     pool_per_task=pool_per_task, val_per_task=1, seed=seed, threads=None, cached=True)
    return Trainer(config, f"{run_dir}/out", f"{run_dir}/run", backbone=backbone)


def measure_training(backbone: Backbone, data: str, batches: int, repeats: int, pool_per_task: int,
                     seed: int = 0, goal: float = 5.0, profile_top: int = 8) -> dict:
    """Seconds per step of both providers over the same batches (cache warmed first)."""
    with tempfile.TemporaryDirectory(prefix="instructedit-bench-") as tmp:
        trainer = make_trainer(backbone, data, pool_per_task, seed, tmp)
        timer = StepTimer(trainer)
        cached: CachedTopForward = trainer.forward
        full = FullForward(backbone)
        stream = iter_mixed(trainer.data.pools, seed, trainer.config.convsent_share)
        examples = [trainer.batch_at(i, stream) for i in range(batches)]
        cold = []
        for ex in examples:  # warm the cache (and the allocator); "first sight" cost
            trainer.forward = cached
            cold.append(train_step(trainer, ex))
        trainer.forward = full
        train_step(trainer, examples[0])  # warm-up of the full path
        cached_s, full_s = [], []
        timer.reset()
        timed_cached = timer.wrap_forward(cached)
        for _ in range(repeats):
            for ex in examples:
                trainer.forward = timed_cached
                timer.active = True
                with timer.total.running():
                    cached_s.append(train_step(trainer, ex, timer))
                timer.active = False
                trainer.forward = full
                full_s.append(train_step(trainer, ex))
        breakdown = _breakdown(timer, len(cached_s))
        cached_sum, full_sum = summarize(cached_s), summarize(full_s)
        speedup = ratio(full_sum.median, cached_sum.median)
        result = {
            "batch_size": trainer.config.batch_size, "batches": batches, "repeats": repeats,
            "editor_rank": trainer.config.rank, "start_layer": cached.start,
            "cached_step_s": cached_sum.to_dict(), "full_step_s": full_sum.to_dict(),
            "cold_cached_step_s": summarize(cold).to_dict(),
            "cached_steps_per_s": cached_sum.inverse().to_dict(),
            "full_steps_per_s": full_sum.inverse().to_dict(),
            "speedup": round(speedup, 3), "goal": goal, "met": speedup >= goal,
            "cached_breakdown_s": breakdown, "cache_entries": len(cached.cache),
            "cache_mib": round(cached.nbytes() / 2 ** 20, 2),
        }
        if speedup < goal:
            log.info("training speedup %.2f < %.1f: profiling the cached step", speedup, goal)
            trainer.forward = cached
            result["profile"] = {"cached_step": top_ops(lambda: train_step(trainer, examples[0]),
                                                        profile_top)}
        return result


def _breakdown(timer: StepTimer, steps: int) -> dict:
    """Mean seconds per cached step spent in each part."""
    if not steps:
        return {}
    parts = {"top_blocks_forward": timer.forward.seconds, "editor_network": timer.network.seconds,
             "outer_backward": timer.backward.seconds, "optimizer": timer.optimizer.seconds}
    total = timer.total.seconds
    parts["rest (edit-gradient backward, scoring, tokenizing)"] = max(0.0, total - sum(parts.values()))
    out = {k: round(v / steps, 4) for k, v in parts.items()}
    out["total"] = round(total / steps, 4)
    return out
