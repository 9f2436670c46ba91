"""PCA of the editor's transformed gradients per task (InstructEdit paper, Fig. 2a).

For every edit, the editor turns the gradient factors ``(u_t, d_t)`` of each edited module into
``(u~_t, d~_t)``. The feature of one edit is taken at one module (default: the last edited
module, the last block's MLP output matrix, e.g. ``down_proj``): the mean over the edit's tokens
of ``u~_t`` and of ``d~_t``, each scaled to unit length (so neither half dominates by scale),
concatenated. Features are projected to 2-D by PCA and drawn coloured by task; the silhouette
score (Euclidean) says how well the tasks separate, both in 2-D and in the full feature space
(both from scikit-learn). ``python -m instructedit analyze`` draws one editor's picture.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.records import EditRecord
from ..data.tasks import load_split
from ..editing.editor import MAX_TARGET_TOKENS, Editor, compute_batched_patch
from ..scoring import tokenize_answers
from .inputs import render
from .selection import limit_records

log = logging.getLogger(__name__)

ANALYSIS_TASKS: tuple[str, ...] = ("counterfact", "recent", "convsent", "zsre")
TASK_COLOURS = {"counterfact": "#1f77b4", "recent": "#ff7f0e", "convsent": "#2ca02c", "zsre": "#d62728"}


# ----- numerics ----------------------------------------------------------------------------------
def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``features`` on their first two principal components (scikit-learn PCA).

    Returns ``(coords (n, 2), explained_variance_ratio (2,))``; with fewer than two components
    (one row or one feature) the missing column and ratio are zero.
    """
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64)
    k = min(2, *x.shape)
    if k < 1 or not np.ptp(x, axis=0).any():  # no spread: nothing to project on
        return np.zeros((len(x), 2)), np.zeros(2)
    pca = PCA(n_components=k, svd_solver="full")
    coords = pca.fit_transform(x)
    ratio = pca.explained_variance_ratio_
    return np.pad(coords, ((0, 0), (0, 2 - k))), np.pad(ratio, (0, 2 - k))


def silhouette(points: np.ndarray, labels: Sequence[str]) -> float:
    """Mean silhouette coefficient (Euclidean): 1 = tight, separate clusters, 0 = overlapping.

    Points in a cluster of one score 0; needs at least two clusters.
    """
    return float(silhouette_samples(points, labels).mean())


def silhouette_by_label(points: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Mean silhouette of each label's points (how well that one cluster stands apart)."""
    scores = silhouette_samples(points, labels)
    labels = np.asarray(labels)
    return {name: round(float(scores[labels == name].mean()), 4) for name in dict.fromkeys(labels.tolist())}


def silhouette_samples(points: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """The silhouette coefficient of every point (scikit-learn's, Euclidean)."""
    from sklearn.metrics import silhouette_samples as sk_silhouette_samples

    if len(set(labels)) < 2:
        raise ValueError("the silhouette needs at least two clusters")
    return sk_silhouette_samples(np.asarray(points, dtype=np.float64), np.asarray(labels), metric="euclidean")


# ----- features ----------------------------------------------------------------------------------
@dataclass
class GradientFeatures:
    """One feature row per edit, its task, and the module it was read at."""

    features: np.ndarray
    tasks: list[str]
    module: str


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def edit_features(editor: Editor, prompts: Sequence[str], targets: Sequence[str],
                  module: str) -> np.ndarray:
    """Features of a batch of edits (one row each) at ``module`` (see the module docstring)."""
    backbone = editor.backbone
    batch = tokenize_answers(backbone.tokenizer, list(prompts), list(targets),
                             MAX_TARGET_TOKENS).to(backbone.device)

    def hidden(b):
        return backbone.model.base_model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state

    patch, _ = compute_batched_patch(editor.network, editor.module_names, batch, hidden, backbone.model)
    layer = patch.layers[module]
    rows = []
    for i in range(batch.size):
        u, d = layer.u[i].detach().float(), layer.d[i].detach().float()
        valid = (u.abs().sum(-1) > 0) | (d.abs().sum(-1) > 0)
        if not valid.any():
            rows.append(torch.zeros(u.shape[-1] + d.shape[-1]))
            continue
        rows.append(torch.cat([_unit(u[valid].mean(0)), _unit(d[valid].mean(0))]).cpu())
    return torch.stack(rows).numpy()


def collect_features(editor: Editor, records: Sequence[EditRecord], *, instruction="seen",
                     seed: int = 0, batch_size: int = 8, module: str | None = None) -> GradientFeatures:
    """Transformed-gradient features of ``records`` (inputs wrapped as the editor expects)."""
    module = module or editor.module_names[-1]
    if module not in editor.module_names:
        raise ValueError(f"{module} is not edited by this editor; edited: {', '.join(editor.module_names)}")
    items = [render(r, instruction, editor.use_instructions, seed) for r in records]
    chunks = []
    for k in range(0, len(items), batch_size):
        part = items[k: k + batch_size]
        chunks.append(edit_features(editor, [it.edit_input for it in part],
                                    [it.record.target_new for it in part], module))
    return GradientFeatures(np.concatenate(chunks), [r.task for r in records], module)


# ----- one analysis ----------------------------------------------------------------------------
@dataclass
class AnalysisResult:
    """What one PCA analysis found (JSON-able)."""

    editor: str
    use_instructions: bool
    module: str
    n_per_task: dict
    silhouette_2d: float
    silhouette_full: float
    explained_variance: list
    per_task_2d: dict = field(default_factory=dict)
    figure: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def plot_pca(coords: np.ndarray, tasks: Sequence[str], title: str, out: str | Path) -> Path:
    """Write a PNG scatter of ``coords`` coloured by task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
    for task in sorted(set(tasks), key=lambda t: ANALYSIS_TASKS.index(t) if t in ANALYSIS_TASKS else 99):
        keep = np.array([t == task for t in tasks])
        ax.scatter(coords[keep, 0], coords[keep, 1], s=12, alpha=0.7, label=task,
                   color=TASK_COLOURS.get(task))
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, markerscale=1.5)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def analyze_features(feats: GradientFeatures, editor_name: str, use_instructions: bool,
                     out: str | Path | None = None, title: str | None = None) -> AnalysisResult:
    """PCA + silhouettes of ``feats`` (and the PNG when ``out`` is given)."""
    coords, ratio = pca_2d(feats.features)
    counts = {t: feats.tasks.count(t) for t in dict.fromkeys(feats.tasks)}
    figure = None
    if out is not None:
        label = "with instructions" if use_instructions else "without instructions"
        figure = str(plot_pca(coords, feats.tasks, title or f"{editor_name} ({label})", out))
    return AnalysisResult(editor=editor_name, use_instructions=use_instructions, module=feats.module,
                          n_per_task=counts, silhouette_2d=round(silhouette(coords, feats.tasks), 4),
                          silhouette_full=round(silhouette(feats.features, feats.tasks), 4),
                          explained_variance=[round(float(r), 4) for r in ratio],
                          per_task_2d=silhouette_by_label(coords, feats.tasks), figure=figure)


def analysis_records(data: str | Path, per_task: int, split: str = "test", seed: int = 0,
                     tasks: Sequence[str] = ANALYSIS_TASKS) -> list[EditRecord]:
    """A seeded sample of ``per_task`` records of each task's split."""
    records: list[EditRecord] = []
    for task in tasks:
        records += limit_records(load_split(data, task, split, seed), per_task, seed)
    return records


def analyze(editor: Editor, records: Sequence[EditRecord], out: str | Path | None = None, *,
            seed: int = 0, batch_size: int = 8, module: str | None = None,
            title: str | None = None) -> AnalysisResult:
    """Features of ``records`` through ``editor``, their PCA picture and silhouettes."""
    feats = collect_features(editor, records, seed=seed, batch_size=batch_size, module=module)
    return analyze_features(feats, editor.name, editor.use_instructions, out, title)


# ----- command line ------------------------------------------------------------------------------
