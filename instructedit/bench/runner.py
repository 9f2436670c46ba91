"""Runs every benchmark section in one process and collects one JSON-serialisable result."""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..editing.editor import Edit, Editor
from ..editing.editors import DEFAULT_RANK, GRADIENT, load_editor
from ..model.backbone import load_backbone
from .config import BenchConfig
from .evaluation import measure_evaluation
from .finetune import compare_with_finetuning
from .first_answer import measure_first_answer
from .gen_speed import measure_decoding, measure_generation
from .latency import measure_edit_latency
from .machine import load_average, machine_info
from .memory import compression, edit_sizes, footprints, sessions
from .rome_latency import compare_with_rome
from .training import measure_training
from .workload import counterfact_records, edit_request

log = logging.getLogger(__name__)


def make_editor(backbone, config: BenchConfig) -> Editor:
    """The editor under test (a checkpoint, or one plain gradient step for ``none``)."""
    spec = GRADIENT if config.editor.strip().lower() == "none" else config.editor
    return load_editor(spec, backbone, step_size=config.step_size,
                       patch_rank=None if spec == GRADIENT else DEFAULT_RANK)


def editor_info(editor: Editor) -> dict:
    meta = editor.metadata or {}
    provenance = meta.get("provenance", {}) if isinstance(meta, dict) else {}
    return {"name": editor.name, "trained": bool(meta), "use_instructions": editor.use_instructions,
            "modules": len(editor.module_names), "patch_rank": editor.patch_rank,
            "training_steps": provenance.get("steps"),
            "network_parameters": editor.network.num_parameters()}


def full_rank_edits(editor: Editor, requests) -> list[Edit]:
    """The same edits kept at full rank (for the generation and compression comparisons)."""
    twin = editor.with_patch_rank(None)
    return [twin.edit(r) for r in requests]


class SectionClock:
    """Wall-clock seconds per section of the run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        log.info("bench: %s ...", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
            log.info("bench: %s done in %.1f s", name, self.seconds[name])


def _float_mode(quants) -> str:
    return "none" if "none" in quants else quants[0]


def _eval_mode(quants) -> str:
    return "4bit" if "4bit" in quants else quants[-1]


def run_bench(config: BenchConfig) -> dict:
    """Measure every section; returns the result (what ``--json`` prints and the report shows)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    cpu_started = time.process_time()
    clock = SectionClock()
    result: dict = {"machine": machine_info(), "config": config.to_dict(), "model": config.model}
    n_edits = max(config.latency_edits, max(config.active_counts), config.compression_edits,
                  config.rome_edits, config.first_answer_edits, 1)
    records = counterfact_records(config.data, max(n_edits, config.finetune_edits,
                                                   config.eval_records), config.seed)
    requests = [edit_request(r) for r in records[:n_edits]]
    latency, generation, decoding, sizes, prints = {}, {}, {}, {}, {}
    float_copy_bytes = None
    for mode in config.quants:
        with clock.section(f"load {mode}"):
            # decoded as the studio decodes (a CPU 4-bit model through the packed kernel: fast_4bit)
            backbone = load_backbone(config.model, mode, fast_4bit=True)
        prints[mode] = backbone.footprint_bytes()
        float_copy_bytes = backbone.parameter_count() * 4
        editor = make_editor(backbone, config)
        result.setdefault("editor", editor_info(editor))
        result.setdefault("backbone", {k: v for k, v in backbone.info().items()
                                       if k in ("model_id", "family", "parameters", "num_layers",
                                                "hidden_size", "edited_modules")})
        with clock.section(f"edit latency {mode}"):
            run = measure_edit_latency(editor, requests, config.latency_edits, config.latency_warmup,
                                       config.goals.edit_latency_ratio, config.profile_top)
        latency[mode] = run.result
        sizes[mode] = edit_sizes(run.edits, config.goals.edit_kilobytes)
        full = run.edits
        if editor.patch_rank is not None:
            with clock.section(f"full-rank edits {mode}"):
                full = full_rank_edits(editor, requests)
        variants = {"as_stored": [e.patch for e in run.edits]}
        if editor.patch_rank is not None:
            variants["full_rank"] = [e.patch for e in full]
        with clock.section(f"generation {mode}"):
            generation[mode] = measure_generation(
                backbone, variants, config.active_counts, config.new_tokens, config.generation_repeats,
                config.generation_prompt, config.goals.generation_overhead_at_10, config.profile_top)
        with clock.section(f"decoding paths {mode}"):
            decoding[mode] = measure_decoding(
                backbone, variants["as_stored"][:1], config.generation_prompt, config.new_tokens,
                config.generation_repeats, config.goals.decode_speedup, config.profile_top)
        if mode == _float_mode(config.quants):
            n = min(config.compression_edits, len(full))
            with clock.section("compression"):
                result["compression"] = {"quantization": mode, "stored_rank": editor.patch_rank,
                                         **compression(editor, records[:n], full[:n],
                                                       config.svd_ranks)}
            with clock.section("fine-tuning comparison"):
                result["finetune"] = {"quantization": mode, **compare_with_finetuning(
                    editor, records[: config.finetune_edits], config.finetune,
                    config.goals.finetune_speedup)}
            with clock.section("ROME comparison"):
                result["rome"] = {"quantization": mode, **compare_with_rome(
                    editor, requests[: config.rome_edits])}
            with clock.section("training"):
                result["training"] = {"quantization": mode, **measure_training(
                    backbone, config.data, config.train_batches, config.train_repeats,
                    config.train_pool_per_task, config.seed, config.goals.training_speedup,
                    config.profile_top)}
        if mode == _eval_mode(config.quants):
            with clock.section("first answer"):
                result["first_answer"] = {"quantization": mode, **measure_first_answer(
                    editor, requests[: config.first_answer_edits], config.first_answer_tokens,
                    config.goals.first_answer_s)}
            with clock.section("evaluation"):
                result["evaluation"] = measure_evaluation(editor, records[: config.eval_records],
                                                          config.eval_batch_size)
        del editor, backbone, run
        gc.collect()
    result["edit_latency"] = latency
    result["generation"] = generation
    result["decoding"] = decoding
    result["memory"] = {"footprint": footprints(prints, config.goals.fourbit_footprint_share),
                        "edit_size": sizes,
                        "sessions": {m: sessions(prints[m], float_copy_bytes,
                                                 sizes[m]["bytes"]["median"]) for m in prints}}
    result["goals"] = goal_table(result, config)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    result["timing"] = {"sections_s": clock.seconds, "total_s": round(wall, 1),
                        "process_cpu_s": round(cpu, 1),
                        # near 1.0: this run had its threads' cores; well below: it shared them
                        "cpu_utilisation": round(cpu / (wall * torch.get_num_threads()), 3),
                        "load_average_at_end": load_average()}
    return result


def _goal(name: str, target: str, value: str, met: bool | None, note: str = "") -> dict:
    return {"goal": name, "target": target, "value": value, "met": met, "note": note}


def goal_table(result: dict, config: BenchConfig) -> list[dict]:
    """One row per goal: what was wanted, what was measured, met or not (and by how much)."""
    goals = config.goals
    rows = []
    for mode, lat in result.get("edit_latency", {}).items():
        r = lat["ratio"]
        rows.append(_goal(f"edit latency / forward+backward ({mode})", f"<= {goals.edit_latency_ratio}",
                          f"{r:.2f}", lat["met"],
                          "" if lat["met"] else f"over by {r / goals.edit_latency_ratio - 1:.0%}"))
    for mode, gen in result.get("generation", {}).items():
        at = gen["goal_count"]
        o = gen["as_stored"]["overhead"][str(at)]
        note = ""
        if "full_rank" in gen:
            note = f"full-rank edits: {gen['full_rank']['overhead'][str(at)]:+.1%}"
        if not gen["met"]:
            note = f"over by {(o - goals.generation_overhead_at_10) * 100:.1f} points; " + note
        rows.append(_goal(f"generation overhead at {at} edits ({mode})",
                          f"<= {goals.generation_overhead_at_10:.0%}", f"{o:+.1%}", gen["met"], note))
    for mode, dec in result.get("decoding", {}).items():
        rows.append(_goal(f"lean decoding / model.generate tokens/s ({mode})", f">= {goals.decode_speedup:g}x",
                          f"{dec['speedup']:.2f}x", dec["met"],
                          ("same tokens" if dec["same_tokens"] else
                           f"token agreement {dec['token_agreement']:.0%}")
                          + ("" if dec["met"] else f"; short by {1 - dec['speedup'] / goals.decode_speedup:.0%}")))
    fp = result.get("memory", {}).get("footprint", {})
    if "met" in fp:
        share = fp["share_of_fp32"]["4bit"]
        rows.append(_goal("4-bit footprint / fp32", f"<= {goals.fourbit_footprint_share:.0%}",
                          f"{share:.1%}", fp["met"]))
    for mode, size in result.get("memory", {}).get("edit_size", {}).items():
        kib = size["kib"]["median"]
        note = (f"edits stored at rank {size['rows']['median']:.0f}" if size["met"]
                else f"{kib / 1024:.2f} MiB: megabytes, see compression")
        rows.append(_goal(f"bytes per edit ({mode})", f"kilobytes (< {goals.edit_kilobytes:.0f} KiB)",
                          f"{kib:,.0f} KiB", size["met"], note))
    ft = result.get("finetune")
    if ft:
        rows.append(_goal("fine-tuning latency / editor latency", f">= {goals.finetune_speedup:g}x",
                          f"{ft['speedup']:.1f}x", ft["speed_met"],
                          "" if ft["speed_met"] else
                          f"short by {1 - ft['speedup'] / goals.finetune_speedup:.0%}"))
        rows.append(_goal("editor reliability >= fine-tuning", ">=",
                          f"{ft['editor']['reliability']:.3f} vs {ft['finetune']['reliability']:.3f}",
                          ft["reliability_met"]))
        rows.append(_goal("editor locality > fine-tuning", ">",
                          f"{_num(ft['editor']['locality'])} vs {_num(ft['finetune']['locality'])}",
                          ft["locality_met"]))
    fa = result.get("first_answer")
    if fa:
        median = fa["cold_s"]["median"]
        rows.append(_goal(f"studio: edit request to first look ({fa['quantization']})",
                          f"<= {goals.first_answer_s:g} s", f"{median:.2f} s", fa["met"],
                          "" if fa["met"] else f"over by {median / goals.first_answer_s - 1:.0%}"))
    tr = result.get("training")
    if tr:
        rows.append(_goal("cached / full training step speed", f">= {goals.training_speedup:g}x",
                          f"{tr['speedup']:.2f}x", tr["met"],
                          "" if tr["met"] else f"short by {1 - tr['speedup'] / goals.training_speedup:.0%}"))
    return rows


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
