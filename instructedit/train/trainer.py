"""The meta-training loop: seeded, validated, best-checkpointed, early-stopped, resumable."""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.mixing import iter_mixed
from ..data.neighbours import NeighbourIndex
from ..data.records import EditRecord
from ..data.tasks import load_split
from ..editing.checkpoint import CONFIG_FILE, load_editor_checkpoint, save_editor_checkpoint
from ..editing.editor import Editor
from ..editing.mend import EditorConfig, MendNetwork
from ..editing.patches import PatchEngine
from ..editing.preconditioning import attach_preconditioners
from ..instructions import SEEN_INSTRUCTION_INDICES
from ..io_utils import atomic_replace, atomic_write_text
from ..model.backbone import Backbone, load_backbone
from ..model.forward import CachedTopForward, FullForward
from .card import write_card
from .config import BUDGET_FIELDS, TRAIN_DTYPES, TrainConfig
from .continuations import ContinuationCache
from .distributed import DistributedContext
from .examples import TrainingExample, render_example
from .step import LossWeights, meta_step, tokenize_examples

log = logging.getLogger(__name__)


def validation_score(reliability: float, locality: float) -> float:
    """Harmonic mean of reliability and locality (both must be high)."""
    if reliability + locality <= 0:
        return 0.0
    return 2 * reliability * locality / (reliability + locality)


def _instruction_for(record: EditRecord, seed: int, use_instructions: bool) -> int | None:
    if not use_instructions:
        return None
    return random.Random(f"instruction:{seed}:{record.task}:{record.id}").choice(SEEN_INSTRUCTION_INDICES)


def _fallback_locality(records: Sequence[EditRecord]) -> list[tuple[str, str]]:
    return [(p.prompt, p.answer) for r in records for p in r.locality][:2000]


def render_records(records: Sequence[EditRecord], seed: int, use_instructions: bool, salt: str,
                   fallback: Sequence[tuple[str, str]], neighbours: NeighbourIndex | None = None,
                   plain_rephrase_share: float = 0.5) -> list[TrainingExample]:
    """Render records with their fixed instruction and a seeded choice of rephrase/probe."""
    out = []
    for r in records:
        rng = random.Random(f"{salt}:{seed}:{r.task}:{r.id}")
        out.append(render_example(r, _instruction_for(r, seed, use_instructions), rng, fallback,
                                  neighbours, plain_rephrase_share))
    return out


@dataclass
class TrainingData:
    """Training pool (per task) and fixed validation examples (per task)."""

    pools: dict[str, list[EditRecord]]
    validation: dict[str, list[TrainingExample]]
    fallback_locality: list[tuple[str, str]]
    neighbours: NeighbourIndex | None = None


def load_training_data(config: TrainConfig) -> TrainingData:
    """Seeded pools from the train splits and fixed examples from the val splits."""
    if "zsre" in config.tasks:
        raise ValueError("zsre is the held-out task: it is never trained on")
    pools, validation = {}, {}
    fallback: list[tuple[str, str]] = []
    train_records: list[EditRecord] = []
    for task in config.tasks:
        train = load_split(config.data, task, "train", config.seed)
        train_records += train
        rng = random.Random(f"pool:{config.seed}:{task}")
        pools[task] = rng.sample(train, min(config.pool_per_task, len(train)))
        fallback += _fallback_locality(pools[task])
    # Neighbours come from the whole train split (the pool's own subjects are too few per template);
    # validation neighbours from the val split, so no validation text is ever trained on.
    neighbours = NeighbourIndex(train_records) if config.neighbour_locality else None
    for task in config.tasks:
        val = load_split(config.data, task, "val", config.seed)
        rng = random.Random(f"val:{config.seed}:{task}")
        chosen = rng.sample(val, min(config.val_per_task, len(val)))
        val_neighbours = NeighbourIndex(val) if config.neighbour_locality else None
        validation[task] = render_records(chosen, config.seed, config.use_instructions, "val", fallback,
                                          val_neighbours, config.plain_rephrase_share)
    return TrainingData(pools, validation, fallback, neighbours)


def _save_state(path: Path, state: dict) -> None:
    atomic_replace(path, lambda tmp: torch.save(state, tmp))


def _success_and_specificity(per_task: dict[str, dict]) -> tuple[float, float]:
    """Mean over tasks of edit success (wrapped and, where measured, plain reliability) and of
    specificity (locality and, where measured, the neighbour's and the continuation's agreement)."""
    def mean_of(m: dict, keys: tuple[str, ...]) -> float:
        values = [m[k] for k in keys if k in m]
        return sum(values) / len(values)

    tasks = list(per_task.values())
    success = sum(mean_of(m, ("reliability", "plain")) for m in tasks) / len(tasks)
    specificity = sum(mean_of(m, ("locality", "neighbour", "continuation", "neighbour_continuation"))
                      for m in tasks) / len(tasks)
    return success, specificity


class Trainer:
    """Meta-trains a :class:`MendNetwork` on a frozen backbone (see :class:`TrainConfig`)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, run_dir: str | Path | None = None,
                 backbone: Backbone | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.run_dir = Path(run_dir) if run_dir else Path("runs") / self.out_dir.name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.distributed = DistributedContext.create()  # before the threads: --threads wins
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.dtype is not None and config.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(TRAIN_DTYPES)}, got {config.dtype!r}")
        self.backbone = backbone or load_backbone(config.model, config.quant, dtype=config.dtype,
                                                  device=self.distributed.device())
        names = self.backbone.edited_module_names(config.last_n_layers, layers=config.layers,
                                                  matrices=config.matrices)
        self.module_names = names
        torch.manual_seed(config.seed)
        editor_config = EditorConfig(rank=config.rank, n_blocks=config.n_blocks, init_lr=config.init_lr,
                                     key_on=config.key_on, precondition=config.precondition,
                                     edit_from=config.edit_from if config.use_instructions else "wrapped")
        self.weights = LossWeights(config.c_edit, config.c_loc, plain=config.plain_loss,
                                   neighbour=config.neighbour_locality,
                                   all_positions=config.kl_all_positions,
                                   continuation=config.continuation_kl_tokens > 0,
                                   continuation_neighbours=config.continuation_kl_neighbours)
        self.network = MendNetwork(Editor.module_shapes(self.backbone, names), editor_config)
        if config.init_from:
            self._start_from_checkpoint(config.init_from, editor_config)
        self.network.to(self.backbone.device)
        attach_preconditioners(self.network, self.backbone)
        PatchEngine.for_model(self.backbone.model, names)
        start = min(self.backbone.adapter.layer_index(n) for n in names)
        self.forward = CachedTopForward(self.backbone, start) if config.cached else FullForward(self.backbone)
        self.optimizer = torch.optim.Adam([
            {"params": [p for n, p in self.network.named_parameters() if n != "log_lr"],
             "lr": config.editor_lr},
            {"params": [self.network.log_lr], "lr": config.step_size_lr}])
        if config.continuation_kl_tokens < 0:
            raise ValueError("continuation_kl_tokens must be 0 (off) or a positive token count")
        if config.continuation_kl_neighbours and not (config.continuation_kl_tokens > 0
                                                      and config.neighbour_locality):
            raise ValueError("continuation_kl_neighbours needs continuation_kl_tokens above 0 and "
                             "neighbour_locality")
        self.data = load_training_data(config)
        self.continuations = (ContinuationCache(self.backbone, config.continuation_kl_tokens)
                              if config.continuation_kl_tokens > 0 else None)
        if self.continuations is not None:
            self.data.validation = {
                task: self.continuations.fill(examples, neighbours=config.continuation_kl_neighbours)
                for task, examples in self.data.validation.items()}
        self.step = 0
        self.best_score = -math.inf
        self.best_metrics: dict = {}
        self.bad_validations = 0
        self.wall_time = 0.0
        self.metrics_file = self.run_dir / "metrics.jsonl"
        self.state_file = self.run_dir / "state.pt"

    def _start_from_checkpoint(self, folder: str, editor_config: EditorConfig) -> None:
        start, saved = load_editor_checkpoint(folder, self.backbone)
        mismatch = [what for what, same in (
            ("edited modules", list(saved["modules"]) == list(self.module_names)),
            ("editor settings", start.config == editor_config),
            ("use of instructions", bool(saved.get("use_instructions", True)) == self.config.use_instructions),
        ) if not same]
        if mismatch:
            raise ValueError(f"init_from {folder}: the checkpoint differs from this run in its "
                             f"{', '.join(mismatch)}")
        self.network.load_state_dict(start.state_dict())
        log.info("editor network initialised from %s", folder)

    # ----- state ---------------------------------------------------------------------------
    def save_state(self) -> None:
        _save_state(self.state_file, {
            "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "step": self.step, "best_score": self.best_score, "best_metrics": self.best_metrics,
            "bad_validations": self.bad_validations, "wall_time": self.wall_time,
            "config": self.config.to_dict()})

    def resume(self) -> bool:
        """Load the last saved state if there is one; True when resumed."""
        if not self.state_file.is_file():
            return False
        state = torch.load(self.state_file, weights_only=True)
        # settings added after a run was saved read as their defaults
        saved = {k: v for k, v in {**TrainConfig().to_dict(), **state["config"]}.items()
                 if k not in BUDGET_FIELDS}
        current = {k: v for k, v in self.config.to_dict().items() if k not in BUDGET_FIELDS}
        if saved != current:
            changed = sorted(k for k in current if saved.get(k) != current[k])
            raise ValueError(f"{self.state_file} was written by a run with other settings "
                             f"({', '.join(changed)}); use a fresh --run-dir or the same settings")
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.best_score = state["best_score"]
        self.best_metrics = state["best_metrics"]
        self.bad_validations = state["bad_validations"]
        self.wall_time = state["wall_time"]
        log.info("resumed from %s at step %d", self.state_file, self.step)
        return True

    # ----- data ----------------------------------------------------------------------------
    def batch_at(self, step: int, stream) -> list[TrainingExample]:
        # The step draws every process's examples; this process renders its own slice, each example
        # seeded by its place in the whole step (n processes of batch b draw what one of n*b would).
        items = [next(stream) for _ in range(self.config.batch_size * self.distributed.world_size)]
        out = []
        for i, item in self.distributed.own_slice(list(enumerate(items))):
            record = item.record
            rng = random.Random(f"train:{self.config.seed}:{step}:{i}")
            instruction = _instruction_for(record, self.config.seed, self.config.use_instructions)
            out.append(render_example(record, instruction, rng, self.data.fallback_locality,
                                      self.data.neighbours, self.config.plain_rephrase_share))
        if self.continuations is None:
            return out
        return self.continuations.fill(out, neighbours=self.config.continuation_kl_neighbours)

    def prefill_continuations(self, chunk: int = 32) -> int:
        """Generate, in large batches, the continuations of every record the remaining steps will
        draw (else each step generates its own few: about a fifth of a step on a CPU)."""
        if self.continuations is None:
            return 0
        stream = self._stream()
        remaining = (self.config.steps - self.step) * self.config.batch_size * self.distributed.world_size
        records = {}
        for _ in range(max(remaining, 0)):
            record = next(stream).record
            records.setdefault((record.task, record.id), record)
        examples = render_records(list(records.values()), self.config.seed, self.config.use_instructions,
                                  "prefill", self.data.fallback_locality)
        started = time.perf_counter()
        new = self.continuations.prefill([e.continuation_prefix for e in examples], chunk)
        log.info("continuations of %d records generated in %.1f s", new, time.perf_counter() - started)
        return new

    def _stream(self):
        stream = iter_mixed(self.data.pools, self.config.seed, self.config.convsent_share)
        for _ in range(self.step * self.config.batch_size * self.distributed.world_size):
            next(stream)
        return stream

    # ----- steps ---------------------------------------------------------------------------
    def run_step(self, examples: Sequence[TrainingExample]):
        tok = self.backbone.tokenizer
        batches = tokenize_examples(tok, self.network, examples, self.config.max_answer_tokens,
                                    self.weights)
        return meta_step(self.network, self.module_names, self.backbone.model, self.forward, examples,
                         tok, self.weights, pad_id=tok.pad_token_id or 0, batches=batches,
                         by_length=self.config.group_rows_by_length)

    def validate(self) -> dict:
        """Metrics per task on the fixed validation examples (network frozen)."""
        self.network.eval()
        metrics: dict = {}
        try:
            for task, examples in self.data.validation.items():
                parts: dict[str, list[torch.Tensor]] = {}
                for i in range(0, len(examples), 8):
                    with torch.no_grad():
                        result = self.run_step(examples[i: i + 8])
                    for key in ("reliability", "generalization", "locality", "plain", "neighbour",
                                "continuation", "neighbour_continuation"):
                        value = getattr(result, key)
                        if value is not None:
                            parts.setdefault(key, []).append(value)
                metrics[task] = {k: float(torch.cat(v).mean()) for k, v in parts.items()}
                metrics[task]["n"] = len(examples)
        finally:
            self.network.train()
        metrics["score"] = validation_score(*_success_and_specificity(metrics))
        return metrics

    def _log(self, record: dict) -> None:
        with open(self.metrics_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def provenance(self, command: str) -> dict:
        return {"steps": self.step, "data": self.config.data, "tasks": list(self.config.tasks),
                "seed": self.config.seed, "wall_time_s": round(self.wall_time, 1),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads, torch "
                           f"{torch.__version__}, {torch.get_num_threads()} torch threads",
                "command": command, "validation": self.best_metrics,
                "train_config": self.config.to_dict()}

    def save_best(self, command: str) -> None:
        save_editor_checkpoint(self.out_dir, self.network, self.backbone, name=self.config.name,
                               use_instructions=self.config.use_instructions,
                               provenance=self.provenance(command))

    def train(self, command: str = "", resume: bool = True, stop_at: int | None = None) -> dict:
        """Run until ``steps`` or early stopping; returns the best validation metrics.

        ``stop_at`` ends this call early at that step (as if killed right after a saved state);
        a later call resumes from the run folder.
        """
        if resume:
            self.resume()
        started = time.perf_counter()
        self.prefill_continuations()
        self.wall_time += time.perf_counter() - started
        self.network.train()
        self.distributed.sync_from_main(self.network)
        stream = self._stream()
        progress = tqdm(total=self.config.steps, initial=self.step, desc=self.config.name,
                        dynamic_ncols=True, mininterval=5, disable=not self.distributed.is_main)
        window: list[dict] = []
        while self.step < self.config.steps:
            started = time.perf_counter()
            examples = self.batch_at(self.step, stream)
            result = self.run_step(examples)
            self.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            self.distributed.average_gradients(self.network)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
            if torch.isfinite(grad_norm):
                self.optimizer.step()
            else:
                log.warning("step %d: non-finite gradient, update skipped", self.step)
            self.distributed.sync_from_main(self.network, parameters=False)
            self.step += 1
            self.wall_time += time.perf_counter() - started
            window.append({"loss": float(result.loss.detach()), "edit_nll": result.edit_nll,
                           "locality_kl": result.locality_kl,
                           "reliability": float(result.reliability.mean()),
                           "locality": float(result.locality.mean())})
            progress.update(1)
            if self.step % self.config.log_every == 0:
                # the window's means over every process's examples
                means = self.distributed.mean({k: sum(w[k] for w in window) / len(window) for k in window[0]})
                avg = {k: round(v, 4) for k, v in means.items()}
                avg.update(step=self.step, kind="train", wall_time_s=round(self.wall_time, 1),
                           lr=[round(float(x), 6) for x in self.network.log_lr.exp()[:3]])
                if self.distributed.is_main:
                    self._log(avg)
                progress.set_postfix(loss=avg["loss"], rel=avg["reliability"], loc=avg["locality"])
                window = []
            out_of_time = (self.config.max_minutes is not None  # the main process's clock decides
                           and self.distributed.from_main(self.wall_time >= 60 * self.config.max_minutes))
            if self.step % self.config.val_every == 0 or self.step == self.config.steps or out_of_time:
                stop = False
                if self.distributed.is_main:
                    stop = self._validate_and_checkpoint(command)
                stop = self.distributed.from_main(stop)
                if stop_at is not None and self.step >= stop_at:
                    break
                if out_of_time:
                    log.info("time budget of %g minutes spent at step %d", self.config.max_minutes, self.step)
                    break
                if stop:
                    log.info("early stopping at step %d: no improvement in %d validations",
                             self.step, self.config.patience)
                    break
        progress.close()
        if self.distributed.is_main:
            self.save_best_card(command)
        self.best_metrics = self.distributed.from_main(self.best_metrics)
        self.distributed.wait()
        return self.best_metrics

    def _validate_and_checkpoint(self, command: str) -> bool:
        """Validate, keep the best checkpoint, save the state; True when training should stop."""
        val_started = time.perf_counter()
        metrics = self.validate()
        self.wall_time += time.perf_counter() - val_started
        self._log({"step": self.step, "kind": "val", "wall_time_s": round(self.wall_time, 1), **metrics})
        log.info("step %d validation score %.4f %s", self.step, metrics["score"],
                 json.dumps({k: v for k, v in metrics.items() if k != "score"}))
        if metrics["score"] > self.best_score:
            self.best_score = metrics["score"]
            self.best_metrics = {"step": self.step, **metrics}
            self.bad_validations = 0
            self.save_best(command)
        else:
            self.bad_validations += 1
        self.save_state()
        return self.bad_validations >= self.config.patience

    def save_best_card(self, command: str) -> None:
        """Refresh the checkpoint's provenance (wall time, steps) after training ends."""
        cfg_file = self.out_dir / CONFIG_FILE
        if not cfg_file.is_file():
            return
        config = json.loads(cfg_file.read_text())
        config["provenance"]["total_steps_run"] = self.step
        config["provenance"]["total_wall_time_s"] = round(self.wall_time, 1)
        config["provenance"]["stopped_early"] = self.step < self.config.steps
        atomic_write_text(cfg_file, json.dumps(config, indent=2) + "\n")
        write_card(self.out_dir)
