"""Model cards for editor checkpoints, generated from their ``editor.json`` (nothing typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path

from ..editing.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_config
from ..editing.schedule import EditSchedule
from ..io_utils import atomic_write_text
from .config import matching_recipe

CARD_FILE = "README.md"
EVAL_FILE = "test_metrics.json"


def _metrics_table(metrics: dict) -> list[str]:
    tasks = [t for t, v in metrics.items() if isinstance(v, dict) and "reliability" in v]
    if not tasks:
        return ["(none recorded)"]
    lines = ["| task | n | reliability | generalization | locality |", "|---|---:|---:|---:|---:|"]
    for task in tasks:
        m = metrics[task]

        def fmt(key: str, m: dict = m) -> str:
            value = m.get(key)
            return "n/a" if value is None else f"{value:.3f}"

        lines.append(f"| {task} | {m.get('n', '')} | {fmt('reliability')} | {fmt('generalization')} | "
                     f"{fmt('locality')} |")
    return lines


def _schedule_section(config: dict) -> list[str]:
    """How edits apply the update (a calibrated schedule, see ``instructedit calibrate``)."""
    schedule = config.get("edit_schedule")
    if not schedule:
        return []
    how = config.get("edit_schedule_calibration") or {}
    described = EditSchedule.from_dict(schedule).describe()
    lines = ["", "## Edit schedule",
             f"Each edit applies the network's update in {described} (each pass made with the earlier "
             f"ones active; with \"until\", the passes after the first are taken only while the target's "
             f"per-token probability is below that on the wrapped input or the typed prompt)."
             if schedule.get("until") is not None else
             f"Each edit applies the network's update in {described} (each pass made with the earlier "
             f"ones active)."]
    if how:
        scores = ", ".join(f"{k}: {'not eligible' if v is None else f'{v:.3f}'}"
                           for k, v in how.get("scores", {}).items())
        lines += [f"Chosen on the {how.get('split')} split of {', '.join(how.get('tasks', []))} "
                  f"({how.get('limit')} records per task, seed {how.get('seed')}, "
                  f"{how.get('quantization')} backbone) by the plain protocol's score (harmonic mean of "
                  f"efficacy and specificity; eligible: fluency ratio at least {how.get('min_fluency')}"
                  + (f" and at most {how['max_degenerate']:.0%} degenerate edits (looping or word salad)"
                     if how.get("max_degenerate") is not None else "") + f"): {scores}.",
                  "", "```bash", *([how["evaluated_by"]] if how.get("evaluated_by") else []),
                  how.get("command") or "(command not recorded)", "```"]
    return lines


def render_card(folder: Path) -> str:
    """The markdown model card of the checkpoint in ``folder``."""
    config = read_checkpoint_config(folder)
    prov = config.get("provenance", {})
    train_cfg = prov.get("train_config", {})
    backbone = config["backbone"]
    with_instr = config.get("use_instructions", True)
    size = (folder / WEIGHTS_FILE).stat().st_size
    val = dict(prov.get("validation", {}))
    best_step = val.pop("step", None)
    score = val.pop("score", None)
    lines = [
        f"# Editor `{config.get('name', folder.name)}` for {backbone['model_id']}",
        "",
        ("An instruction-conditioned MEND editor (InstructEdit, arXiv:2402.16123): edit inputs are "
         "wrapped as `Task: {task}\\nDescription: {instruction}\\nInput: {prompt}`."
         if with_instr else
         "The multi-task MEND baseline: trained on the same data and budget as the InstructEdit "
         "editor, but its edit inputs carry no instruction."),
        "",
        "## Base model",
        f"- {backbone['model_id']} ({backbone['family']}, {backbone['num_layers']} layers, hidden "
        f"{backbone['hidden_size']}, vocabulary {backbone['vocab_size']})",
        f"- edited modules ({len(config['modules'])}): " + ", ".join(f"`{m}`" for m in config["modules"]),
        "",
        "## Editor",
        f"- parameters: {config.get('parameters', 'n/a'):,}; weights file {size / 2**20:.1f} MiB "
        "(bf16, running statistics and step sizes fp32)",
        f"- hyper-parameters: {json.dumps(config['editor'])}",
        f"- uses instructions: {with_instr}",
        "",
        "## Training",
        f"- data: `{prov.get('data', '')}` tasks {', '.join(prov.get('tasks', []))} "
        f"(train splits; pool of {train_cfg.get('pool_per_task', 'n/a')} records per task, seed "
        f"{prov.get('seed', '')}; zsRE never trained on)",
        f"- best checkpoint at step {best_step} of {prov.get('total_steps_run', prov.get('steps', ''))} "
        f"run (batch {train_cfg.get('batch_size', '')} edits per step); early stopped: "
        f"{prov.get('stopped_early', 'n/a')}",
        f"- wall time: {prov.get('total_wall_time_s', prov.get('wall_time_s', 'n/a'))} s on "
        f"{prov.get('machine', 'n/a')}",
        f"- loss: c_edit {train_cfg.get('c_edit')} x NLL (edit input + rephrase) + c_loc "
        f"{train_cfg.get('c_loc')} x KL (locality answers); Adam lr {train_cfg.get('editor_lr')} "
        f"(editor), {train_cfg.get('step_size_lr')} (log step sizes)",
        f"- full training config: {json.dumps(train_cfg)}",
        "",
        *_retrain_lines(train_cfg, prov.get("command"), folder),
        "",
        f"## Validation (val splits, best step; score = harmonic mean of reliability and locality: "
        f"{score if score is None else round(score, 4)})",
        *_metrics_table(val),
    ]
    lines += _schedule_section(config)
    eval_file = folder / EVAL_FILE
    if eval_file.is_file():
        test = json.loads(eval_file.read_text())
        lines += ["", "## Test splits", f"Measured with `{test.get('command', '')}`:", "",
                  *_metrics_table(test.get("metrics", {}))]
    return "\n".join(lines) + "\n"


def _retrain_lines(train_cfg: dict, command: str | None, folder: Path) -> list[str]:
    """How to train this editor again from a fresh clone: the repository's recipe with the same
    settings where one exists, and the command recorded on the machine that trained it."""
    recipe = matching_recipe(train_cfg) if train_cfg else None
    lines = []
    if recipe is not None:
        lines += [f"Retrain with (`docs/recipes/{recipe.name}`: the same settings; the step budget may differ):",
                  "", "```bash", f"python -m instructedit train --config docs/recipes/{recipe.name} "
                  f"--out runs/{folder.name}/ckpt", "```", ""]
    else:
        lines += ["Retrain with: the full training config above, saved as a JSON file, and "
                  "`python -m instructedit train --config FILE --out DIR`.", ""]
    return lines + ["Recorded command (paths of the machine that trained it):", "", "```bash",
                    command or "(command not recorded)", "```"]


def write_card(folder: str | Path) -> Path:
    """(Re)write ``README.md`` in the checkpoint folder, atomically."""
    folder = Path(folder)
    return atomic_write_text(folder / CARD_FILE, render_card(folder))


__all__ = ["render_card", "write_card", "CONFIG_FILE", "EVAL_FILE"]
