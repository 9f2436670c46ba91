"""The results report's runs: backbones, records and editors loaded once, each evaluation
(:class:`~.results_data.RunSpec`) run by the evaluator or read from its cache (``--cache-dir``),
so an interrupted run resumes."""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from ..defaults import DEFAULT_PATCH_RANK
from ..editing.checkpoint import CheckpointError, read_checkpoint_config
from ..model.backbone import BackboneError, load_backbone
from . import lanes
from .config import ResultsConfig
from .editors import editor_label, load_eval_editor
from .results_data import Outcome, RunSpec
from .runner import EvalConfig, Evaluator
from .selection import limit_records, load_eval_records

log = logging.getLogger(__name__)

CACHE_VERSION = 2


def checkpoint_card(path: str) -> dict | None:
    """Name, instructions flag and training provenance of a checkpoint (None if absent)."""
    try:
        config = read_checkpoint_config(path)
    except CheckpointError:
        return None
    prov = config.get("provenance", {}) or {}
    return {"path": str(path), "name": config.get("name"), "use_instructions": config.get("use_instructions"),
            "steps": prov.get("steps"), "total_steps_run": prov.get("total_steps_run"),
            "wall_time_s": prov.get("total_wall_time_s", prov.get("wall_time_s")),
            "tasks": prov.get("tasks"), "stopped_early": prov.get("stopped_early"),
            "validation_score": (prov.get("validation") or {}).get("score"),
            "editor": config.get("editor"), "edit_schedule": config.get("edit_schedule")}


class ResultsRunner:
    """Loads backbones, records and editors once and runs :class:`RunSpec` evaluations."""

    def __init__(self, config: ResultsConfig, run_id: str = "") -> None:
        self.config = config
        self.run_id = run_id            # the results run this process belongs to (several lanes share it)
        self.skip_claimed = False       # a lane's first pass: leave what another lane runs to it
        self._backbones: dict = {}
        self._records: dict = {}
        self._editors: dict = {}
        self.runs: list[Outcome] = []

    # ----- resources -------------------------------------------------------------------------
    def backbone(self, quant: str):
        if quant not in self._backbones:
            log.info("loading %s (%s)", self.config.model, quant)
            self._backbones[quant] = load_backbone(self.config.model, quant, device=self.config.device)
        return self._backbones[quant]

    def release(self, quant: str) -> None:
        """Drop a backbone (and its editors) that is no longer needed."""
        self._backbones.pop(quant, None)
        for key in [k for k in self._editors if k[1] == quant]:
            del self._editors[key]
        gc.collect()

    def records(self, task: str, split: str, limit: int | None = None):
        """A seeded sample of ``limit`` records of a split (all of it when ``limit`` is None)."""
        key = (task, split, limit)
        if key not in self._records:
            if limit is None:
                self._records[key] = load_eval_records(self.config.data, task, split, self.config.seed)
            else:
                self._records[key] = limit_records(self.records(task, split), limit, self.config.seed)
        return self._records[key]

    def editor(self, spec: RunSpec):
        key = (spec.editor, spec.quant, spec.step_size, spec.patch_rank)
        if key not in self._editors:
            self._editors[key] = load_eval_editor(spec.editor, self.backbone(spec.quant), spec.step_size,
                                                  spec.patch_rank)
        return self._editors[key]

    # ----- caching ---------------------------------------------------------------------------
    def _cache_file(self, spec: RunSpec) -> Path | None:
        if not self.config.cache_dir:
            return None
        stamp = None
        weights = Path(spec.editor) / "editor.safetensors"
        if weights.is_file():
            stat = weights.stat()
            # the config too: it carries the edit schedule (calibrate --write changes only it)
            config = Path(spec.editor) / "editor.json"
            config_sha = hashlib.sha1(config.read_bytes()).hexdigest() if config.is_file() else None
            stamp = (stat.st_mtime_ns, stat.st_size, config_sha)
        key = json.dumps({"v": CACHE_VERSION, "spec": asdict(spec), "stamp": stamp,
                          "model": self.config.model, "seed": self.config.seed,
                          "data": str(Path(self.config.data).resolve()),
                          "batch": self.config.batch_size, "patch_rank": DEFAULT_PATCH_RANK},
                         sort_keys=True, default=str)
        return Path(self.config.cache_dir) / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")

    # ----- running ---------------------------------------------------------------------------
    def run(self, spec: RunSpec, decides: bool = False) -> Outcome:
        """Evaluate ``spec`` (or read its cached summary); never raises for a missing checkpoint.

        With several lanes (``config.lanes``), an evaluation another lane has claimed is waited
        for, or, in a lane's first pass (``skip_claimed``), left to it (an Outcome with a reason,
        not recorded) unless ``decides``: its result decides what runs next (the step-size sweep).
        """
        if spec.editor not in ("none", "gradient", "rome") and checkpoint_card(spec.editor) is None:
            outcome = Outcome(spec, reason=f"no editor checkpoint at {spec.editor}")
            self.runs.append(outcome)
            return outcome
        cache = self._cache_file(spec)
        claimed = False
        if cache is not None and self.config.lanes > 1 and not cache.is_file():
            claimed = lanes.try_claim(cache)
            if claimed and cache.is_file():  # cached by another lane just before the claim
                lanes.release(cache)
                claimed = False
            elif not claimed:
                if self.skip_claimed and not decides:
                    return Outcome(spec, reason="run by another lane")
                log.info("waiting for another lane: %s", spec.label())
                claimed = not lanes.wait_for(cache)
        if cache is not None and cache.is_file():
            return self._read_cached(spec, cache)
        try:
            return self._evaluate(spec, cache)
        finally:
            if claimed:
                lanes.release(cache)

    def _read_cached(self, spec: RunSpec, cache: Path) -> Outcome:
        data = json.loads(cache.read_text())
        this_run = bool(self.run_id) and data.get("run_id") == self.run_id
        outcome = Outcome(spec, data["summary"], data["editor_name"], records=data.get("records", []),
                          cached=not this_run)
        log.info("%s: %s", "run by a lane of this run" if this_run else "cached", spec.label())
        self.runs.append(outcome)
        return outcome

    def _evaluate(self, spec: RunSpec, cache: Path | None) -> Outcome:
        try:
            editor = self.editor(spec)
        except (CheckpointError, BackboneError) as exc:
            log.warning("%s: %s", spec.label(), exc)
            outcome = Outcome(spec, reason=str(exc))
            self.runs.append(outcome)
            return outcome
        config = EvalConfig(instruction=spec.instruction, batch_size=self.config.batch_size,
                            seed=self.config.seed, sentiment=spec.sentiment,
                            progress=self.config.progress, plain=spec.plain)
        records = self.records(spec.task, spec.split, spec.limit)
        pool = self.records(spec.task, spec.split) if spec.plain else None
        result = Evaluator(self.backbone(spec.quant), editor, config, neighbour_pool=pool).run(
            records, desc=f"{spec.method[:16]} {spec.task} {spec.quant}")
        summary = result.summary.to_dict()
        summary.update(model_id=self.backbone(spec.quant).model_id,
                       use_instructions=True if editor is None else editor.use_instructions)
        outcome = Outcome(spec, summary, editor_label(editor), records=[r.to_dict() for r in result.records])
        log.info("%s: reliability %.3f locality %s (%.0f s)", spec.label(), result.summary.reliability,
                 result.summary.locality, result.summary.seconds)
        if cache is not None:
            lanes.write_atomically(cache, json.dumps({
                "summary": outcome.summary, "editor_name": outcome.editor_name,
                "records": outcome.records, "run_id": self.run_id, "pid": os.getpid()}))
        self.runs.append(outcome)
        return outcome
