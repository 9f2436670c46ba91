"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", Sec. 2):
which hidden states carry a fact from the subject to the answer.

1. **Clean run**: the prompt as is; every block's output (hidden state), every MLP's output and
   every attention's output is recorded at every token, and ``p_clean`` is the probability of
   the answer's first token (default: the model's greedy next token).
2. **Corrupted run**: Gaussian noise of ``noise * std(embeddings)`` (``std`` over the token
   embedding matrix; ``noise = 3`` as in the paper) is added to the token embeddings of the
   subject, ``samples`` seeded draws; ``p_corrupted`` is the answer's mean probability.
3. **Restored runs**: the corrupted run again, with one state put back to its clean value: the
   block output of layer ``l`` at token ``t`` (``hidden``), or the MLP's or the attention's
   contribution (``mlp``, ``attn``; ``window`` consecutive layers centred on ``l``, 1 by
   default, the paper uses 10 of GPT-2 XL's 48). The mean answer probability of each restored
   run fills a (layers x tokens) grid per kind; its excess over ``p_corrupted`` is the state's
   indirect effect.

:func:`average_indirect_effect` averages the effects over many records by token category (first,
middle and last subject token, first subsequent token, further tokens, last token), which is how
ROME's layer is chosen: the layer whose MLP, restored at the last subject token, recovers most.
Every restoration of one (kind, layer) runs as one batch. Interventions go through
:func:`instructedit.model.adapters.intervene` (per context: other users of a shared model are unaffected).
"""
from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .defaults import TRACE_KINDS
from .editing.patches import PatchEngine
from .editing.rome import SubjectError, subject_span
from .model.adapters import intervene
from .model.backbone import Backbone
from .scoring import answer_text

log = logging.getLogger(__name__)

__all__ = ["KINDS", "CATEGORIES", "TraceResult", "AverageEffect", "trace", "restored_probability",
           "average_indirect_effect", "predicts", "summarise", "format_table", "save_heatmap", "token_categories"]

KINDS: tuple[str, ...] = TRACE_KINDS
KIND_LABELS = {"hidden": "hidden state (block output)", "mlp": "MLP output", "attn": "attention output"}
CATEGORIES: tuple[str, ...] = ("first subject token", "middle subject tokens", "last subject token",
                               "first subsequent token", "further tokens", "last token")
LAST_SUBJECT = "last subject token"
Restoration = tuple[str, int, int]  # (kind, layer, token)


@dataclass
class TraceResult:
    """One prompt's causal trace; ``scores[kind]`` is (layers, tokens) of restored probabilities."""

    prompt: str
    subject: str
    answer: str
    answer_token: int
    tokens: list[str]
    subject_range: tuple[int, int]
    clean_prob: float
    corrupted_prob: float
    scores: dict[str, np.ndarray]
    noise_std: float
    samples: int
    window: int
    seed: int

    @property
    def num_layers(self) -> int:
        return int(next(iter(self.scores.values())).shape[0])

    def effect(self, kind: str) -> np.ndarray:
        """Indirect effects (restored minus corrupted probability), (layers, tokens)."""
        return self.scores[kind] - self.corrupted_prob

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "subject": self.subject, "answer": self.answer,
                "answer_token": self.answer_token, "tokens": self.tokens,
                "subject_range": list(self.subject_range), "clean_prob": self.clean_prob,
                "corrupted_prob": self.corrupted_prob, "noise_std": self.noise_std,
                "samples": self.samples, "window": self.window, "seed": self.seed,
                "scores": {k: np.round(v, 6).tolist() for k, v in self.scores.items()},
                "summary": summarise(self)}


@dataclass
class AverageEffect:
    """Indirect effects averaged over records: ``effects[kind]`` is (layers, categories)."""

    effects: dict[str, np.ndarray]
    counts: np.ndarray                       # (categories,) records with a token in each
    n_records: int
    skipped: list[str] = field(default_factory=list)
    mean_clean: float = 0.0
    mean_corrupted: float = 0.0
    categories: tuple[str, ...] = CATEGORIES
    window: int = 1

    def best_layer(self, kind: str = "mlp", category: str = LAST_SUBJECT, *,
                   skip_first: bool = False) -> int:
        """The layer with the largest average effect of ``kind`` at ``category``.

        ``skip_first``: only layers whose restored window leaves out layer 0.
        """
        column = self.effects[kind][:, self.categories.index(category)].copy()
        if skip_first:
            column[: 1 + (self.window // 2 if kind != "hidden" else 0)] = np.nan
        if np.all(np.isnan(column)):
            raise ValueError(f"no layer has an effect in category {category!r}")
        return int(np.nanargmax(column))

    def rome_layer(self) -> int:
        """The layer ROME should edit: the best MLP restoration at the last subject token, the
        first MLP left out (in small models it acts as part of the token embedding: restoring it
        at the last subject token gives back that token's identity, not a recalled fact, and a
        key that only says "this token" would fire on every subject ending with it)."""
        return self.best_layer("mlp", LAST_SUBJECT, skip_first=True)

    def to_dict(self) -> dict[str, Any]:
        return {"n_records": self.n_records, "skipped": self.skipped,
                "mean_clean": self.mean_clean, "mean_corrupted": self.mean_corrupted,
                "categories": list(self.categories), "counts": self.counts.tolist(),
                "effects": {k: [[None if np.isnan(x) else round(float(x), 6) for x in row] for row in v]
                            for k, v in self.effects.items()},
                "window": self.window,
                "best_layer": {k: self._best_or_none(k) for k in self.effects},
                "rome_layer": self._best_or_none("mlp", skip_first=True) if "mlp" in self.effects else None,
                "summary": summarise(self)}

    def _best_or_none(self, kind: str, skip_first: bool = False) -> int | None:
        try:
            return self.best_layer(kind, skip_first=skip_first)
        except ValueError:
            return None


# ----- one prompt ----------------------------------------------------------------------------------
def _module_name(backbone: Backbone, kind: str, layer: int) -> str:
    adapter, model = backbone.adapter, backbone.model
    if kind == "hidden":
        return adapter.block_name(layer, model)
    if kind == "mlp":
        return adapter.mlp_name(layer, model)
    if kind == "attn":
        return adapter.attention_name(layer, model)
    raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")


def embedding_std(backbone: Backbone) -> float:
    """The standard deviation of the token embedding matrix (the noise scale's unit)."""
    return float(backbone.model.get_input_embeddings().weight.detach().float().std())


class _Tracer:
    """One prompt prepared for tracing: clean states, the answer token, the seeded noise and the
    corrupted states entering every block (a restored run starts at its lowest restored layer)."""

    def __init__(self, backbone: Backbone, prompt: str, subject: str, answer: str | None,
                 samples: int, noise: float, seed: int, kinds: Sequence[str]) -> None:
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        self.backbone = backbone
        adapter, model, tokenizer = backbone.adapter, backbone.model, backbone.tokenizer
        self.prompt = prompt.strip()
        self.ids = tokenizer(self.prompt)["input_ids"]
        self.span = subject_span(tokenizer, self.prompt, subject)
        self.samples = samples
        self.layers = adapter.num_layers(model)
        device = backbone.device
        input_ids = torch.tensor([self.ids], device=device)
        clean: dict[tuple[str, int], torch.Tensor] = {}

        def recorder(key: tuple[str, int]):
            def record(x: torch.Tensor, out: torch.Tensor) -> None:
                clean[key] = out[0].detach()
            return record

        edits = {_module_name(backbone, k, layer): recorder((k, layer))
                 for k in kinds for layer in range(self.layers)}
        with torch.no_grad(), intervene(model, edits):
            probs = self._last_probs(adapter.run_from_layer(model, adapter.embed(model, input_ids), 0))[0]
        self.clean = clean
        if answer is None or not answer.strip():
            self.answer_token = int(probs.argmax())
        else:
            self.answer_token = tokenizer(answer_text(answer), add_special_tokens=False)["input_ids"][0]
        self.answer = tokenizer.decode([self.answer_token])
        self.clean_prob = float(probs[self.answer_token])
        self.noise_std = noise * embedding_std(backbone)
        hidden_size = model.get_input_embeddings().weight.shape[1]
        generator = torch.Generator().manual_seed(seed)
        s0, s1 = self.span
        noise_t = (torch.randn(samples, s1 - s0, hidden_size, generator=generator) * self.noise_std).to(device)

        def corrupt(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[:, s0:s1] += noise_t.to(out.dtype)
            return out

        rows = input_ids.expand(samples, -1)
        with torch.no_grad(), intervene(model, {adapter.token_embedding_name(): corrupt}):
            states = [adapter.embed(model, rows)]
        with torch.no_grad():
            for layer in range(self.layers):
                states.append(adapter.run_blocks(model, states[-1], layer, layer + 1))
        self.corrupted_in = states  # states[l]: the corrupted states entering block l

    def _last_probs(self, final_hidden: torch.Tensor) -> torch.Tensor:
        logits = self.backbone.model.get_output_embeddings()(final_hidden[:, -1])
        return torch.softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def run(self, groups: Sequence[Sequence[Restoration]]) -> list[float]:
        """The answer's mean probability over the noise samples for each group of restorations."""
        targets: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for g, group in enumerate(groups):
            for kind, layer, token in group:
                rows, tokens = targets.setdefault((kind, layer), ([], []))
                rows.extend(range(g * self.samples, (g + 1) * self.samples))
                tokens.extend([token] * self.samples)
        start = min((layer for _, layer in targets), default=self.layers)
        edits = {_module_name(self.backbone, kind, layer): self._restorer(kind, layer, rows, tokens)
                 for (kind, layer), (rows, tokens) in targets.items()}
        hidden = self.corrupted_in[start].repeat(len(groups), 1, 1)
        adapter, model = self.backbone.adapter, self.backbone.model
        with intervene(model, edits):
            probs = self._last_probs(adapter.run_from_layer(model, hidden, start))[:, self.answer_token]
        return probs.view(len(groups), self.samples).mean(1).tolist()

    def _restorer(self, kind: str, layer: int, rows: list[int], tokens: list[int]):
        clean = self.clean[(kind, layer)]
        device = clean.device
        row_idx = torch.tensor(rows, device=device)
        tok_idx = torch.tensor(tokens, device=device)

        def restore(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[row_idx, tok_idx] = clean[tok_idx].to(out.dtype)
            return out
        return restore


def _window(layer: int, window: int, n_layers: int) -> range:
    """The ``window`` layers centred on ``layer``, clipped at the ends (fewer there)."""
    start = layer - window // 2
    return range(max(0, start), min(n_layers, start + window))


def trace(backbone: Backbone, prompt: str, subject: str, answer: str | None = None, *,
          samples: int = 10, noise: float = 3.0, seed: int = 0, kinds: Sequence[str] = KINDS,
          window: int = 1, tokens: str | Sequence[int] = "all", max_rows: int = 256) -> TraceResult:
    """The causal trace of ``prompt`` about ``subject`` (see the module docstring).

    ``answer``: its first token is traced (default: the greedy next token). ``window`` applies
    to ``mlp`` and ``attn``. ``tokens``: the positions restored, ``"all"``, ``"last_subject"``
    (enough to choose ROME's layer, many times faster) or a list; the others are NaN (positions
    before the subject are not run: restoring them changes nothing, they get ``p_corrupted``).
    Runs without active edits. Raises :class:`~instructedit.editing.rome.SubjectError` when the subject
    is not in the prompt.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    with PatchEngine.activate(None):
        tracer = _Tracer(backbone, prompt, subject, answer, samples, noise, seed, kinds)
        corrupted = tracer.run([()])[0]
        n_tokens = len(tracer.ids)
        positions = _positions(tokens, n_tokens, tracer.span)
        run_at = [t for t in positions if t >= tracer.span[0]]  # earlier states: same when corrupted
        per_run = max(1, max_rows // samples)
        scores = {}
        for kind in kinds:
            grid = np.full((tracer.layers, n_tokens), np.nan)
            grid[:, [t for t in positions if t < tracer.span[0]]] = corrupted
            for layer in range(tracer.layers):
                span = [layer] if kind == "hidden" else list(_window(layer, window, tracer.layers))
                groups = [[(kind, li, t) for li in span] for t in run_at]
                values = []
                for k in range(0, len(groups), per_run):
                    values += tracer.run(groups[k: k + per_run])
                grid[layer, run_at] = values
            scores[kind] = grid
    tokens = [backbone.tokenizer.decode([i]) for i in tracer.ids]
    return TraceResult(tracer.prompt, subject.strip(), tracer.answer, tracer.answer_token, tokens,
                       tracer.span, tracer.clean_prob, corrupted, scores, tracer.noise_std, samples,
                       window, seed)


def _positions(tokens: str | Sequence[int], n_tokens: int, span: tuple[int, int]) -> list[int]:
    if tokens == "all":
        return list(range(n_tokens))
    if tokens == "last_subject":
        return [span[1] - 1]
    if isinstance(tokens, str):
        raise ValueError(f"tokens must be 'all', 'last_subject' or positions, got {tokens!r}")
    positions = sorted({int(t) % n_tokens if -n_tokens <= int(t) < n_tokens else int(t) for t in tokens})
    if not positions or positions[0] < 0 or positions[-1] >= n_tokens:
        raise ValueError(f"token positions must be in 0..{n_tokens - 1}, got {list(tokens)}")
    return positions


def restored_probability(backbone: Backbone, prompt: str, subject: str,
                         restore: Iterable[Restoration] = (), answer: str | None = None, *,
                         samples: int = 10, noise: float = 3.0, seed: int = 0) -> dict[str, float]:
    """One corrupted run with the listed ``(kind, layer, token)`` states restored.

    Returns ``{"clean": p_clean, "restored": p}`` (with nothing restored, ``p`` is the corrupted
    probability; with every layer's hidden state at every token, the clean one).
    """
    restore = list(restore)
    kinds = tuple(dict.fromkeys(k for k, _, _ in restore)) or ("hidden",)
    with PatchEngine.activate(None):
        tracer = _Tracer(backbone, prompt, subject, answer, samples, noise, seed, kinds)
        restored = tracer.run([restore])[0]
    return {"clean": tracer.clean_prob, "restored": restored}


# ----- many records --------------------------------------------------------------------------------
def token_categories(n_tokens: int, subject_range: tuple[int, int]) -> list[int | None]:
    """The :data:`CATEGORIES` index of every token (None for tokens before the subject)."""
    s0, s1 = subject_range
    out: list[int | None] = []
    for t in range(n_tokens):
        if s0 <= t < s1:
            out.append(2 if t == s1 - 1 else 0 if t == s0 else 1)
        elif t == n_tokens - 1 and t >= s1:
            out.append(5)
        elif t == s1:
            out.append(3)
        elif t > s1:
            out.append(4)
        else:
            out.append(None)
    return out


ANSWER_CHOICES = ("greedy", "ground_truth", "known")


@torch.no_grad()
def predicts(backbone: Backbone, prompt: str, answer: str) -> bool:
    """Whether the model's greedy next token after ``prompt`` is the first token of ``answer``."""
    tokenizer, model = backbone.tokenizer, backbone.model
    ids = torch.tensor([tokenizer(prompt.strip())["input_ids"]], device=backbone.device)
    first = tokenizer(answer_text(answer), add_special_tokens=False)["input_ids"][0]
    with PatchEngine.activate(None):
        hidden = model.base_model(input_ids=ids).last_hidden_state[:, -1]
    return int(model.get_output_embeddings()(hidden).argmax(-1)[0]) == first


def average_indirect_effect(backbone: Backbone, records: Iterable[Any], *, samples: int = 10,
                            noise: float = 3.0, seed: int = 0, kinds: Sequence[str] = KINDS,
                            window: int = 1, tokens: str = "all", answers: str = "greedy",
                            limit: int | None = None) -> AverageEffect:
    """Average indirect effects of ``records`` by token category (see the module docstring).

    ``records``: objects with ``prompt`` and ``subject`` (and ``ground_truth`` for the answers
    below), or ``(prompt, subject)`` pairs. ``answers``: ``greedy`` traces the model's own next
    token, ``ground_truth`` the true answer's first token, ``known`` only the records whose true
    answer the model predicts (the paper's "known facts"; the others are skipped). ``tokens=
    "last_subject"`` traces only the last subject token (the other categories stay NaN).
    ``limit``: stop after that many traced records. Records whose subject is missing or not in
    the prompt are skipped too (``skipped`` lists their ids or prompts).
    """
    if answers not in ANSWER_CHOICES:
        raise ValueError(f"answers must be one of {ANSWER_CHOICES}, got {answers!r}")
    sums = {k: np.zeros((backbone.adapter.num_layers(backbone.model), len(CATEGORIES))) for k in kinds}
    counts = np.zeros(len(CATEGORIES))
    skipped: list[str] = []
    clean, corrupted, n = 0.0, 0.0, 0
    for record in records:
        if limit is not None and n >= limit:
            break
        prompt, subject = (record.prompt, record.subject) if hasattr(record, "prompt") else record[:2]
        answer = getattr(record, "ground_truth", None) if answers != "greedy" else None
        name = str(getattr(record, "id", prompt))
        if answers != "greedy" and not answer:
            skipped.append(name)
            continue
        if answers == "known" and not predicts(backbone, prompt, answer):
            skipped.append(name)
            continue
        try:
            result = trace(backbone, prompt, subject, answer, samples=samples, noise=noise, seed=seed,
                           kinds=kinds, window=window, tokens=tokens)
        except SubjectError as exc:
            log.info("causal tracing skips %r: %s", prompt, exc)
            skipped.append(name)
            continue
        n += 1
        clean += result.clean_prob
        corrupted += result.corrupted_prob
        traced = ~np.isnan(next(iter(result.scores.values()))).all(0)
        cats = [c if traced[t] else None
                for t, c in enumerate(token_categories(len(result.tokens), result.subject_range))]
        present = sorted({c for c in cats if c is not None})
        counts[present] += 1
        for kind in kinds:
            effect = result.effect(kind)
            for c in present:
                cols = [t for t, cat in enumerate(cats) if cat == c]
                sums[kind][:, c] += effect[:, cols].mean(1)
    if n == 0:
        raise SubjectError("no record could be traced (none has its subject in its prompt"
                           + (", and a true answer the model predicts)" if answers == "known" else ")"))
    with np.errstate(invalid="ignore", divide="ignore"):
        effects = {k: np.where(counts > 0, v / np.maximum(counts, 1), np.nan) for k, v in sums.items()}
    return AverageEffect(effects, counts, n, skipped, clean / n, corrupted / n, window=window)


# ----- reading ---------------------------------------------------------------------------------------
def _layer_band(column: np.ndarray) -> tuple[int, int, int]:
    """(first, last, best) layers of the contiguous band around the best value holding at least
    half of it."""
    best = int(np.nanargmax(column))
    threshold = column[best] / 2
    lo = hi = best
    while lo > 0 and column[lo - 1] >= threshold:
        lo -= 1
    while hi < len(column) - 1 and column[hi + 1] >= threshold:
        hi += 1
    return lo, hi, best


def _layers_text(lo: int, hi: int) -> str:
    return f"layer {lo}" if lo == hi else f"layers {lo}-{hi}"


def summarise(result: TraceResult | AverageEffect) -> str:
    """A one-line reading of a trace or of averaged effects."""
    if isinstance(result, AverageEffect):
        parts = [f"over {result.n_records} records (mean clean p={result.mean_clean:.3f}, "
                 f"corrupted p={result.mean_corrupted:.3f})"]
        col = CATEGORIES.index(LAST_SUBJECT)
        for kind in result.effects:
            column = result.effects[kind][:, col]
            if np.all(np.isnan(column)) or np.nanmax(column) <= 0:
                parts.append(f"{kind}: no effect at the last subject token")
                continue
            lo, hi, best = _layer_band(column)
            name = {"hidden": "the hidden states", "mlp": "the MLPs", "attn": "the attention"}[kind]
            parts.append(f"{name} of {_layers_text(lo, hi)} at the last subject token carry it "
                         f"(best {best}, effect {column[best]:+.3f})")
        return "; ".join(parts)
    parts = [f"p({result.answer!r}) clean {result.clean_prob:.3f}, corrupted {result.corrupted_prob:.3f}"]
    gap = result.clean_prob - result.corrupted_prob
    if gap <= 1e-3:
        return parts[0] + "; corrupting the subject does not lower the answer: nothing to trace"
    last = result.subject_range[1] - 1
    for kind in result.scores:
        effect = result.effect(kind)
        if np.all(np.isnan(effect)):
            continue
        layer, token = np.unravel_index(int(np.nanargmax(effect)), effect.shape)
        where = f"token {result.tokens[token]!r}" + (" (last subject token)" if token == last else "")
        share = effect[layer, token] / gap
        at_last = effect[:, last]
        if kind == "mlp" and not np.all(np.isnan(at_last)) and np.nanmax(at_last) > 0.1 * gap:
            lo, hi, _ = _layer_band(at_last)
            parts.append(f"the MLPs of {_layers_text(lo, hi)} at the last subject token carry it "
                         f"(up to {np.nanmax(at_last) / gap:.0%} of the gap)")
        else:
            parts.append(f"{kind}: strongest at layer {layer}, {where} ({share:.0%} of the gap)")
    return "; ".join(parts)


def _grid(result: TraceResult | AverageEffect, kind: str) -> tuple[np.ndarray, list[str]]:
    """(rows x layers) values and row labels: tokens (``*`` marks the subject) or categories."""
    if isinstance(result, AverageEffect):
        return result.effects[kind].T, list(result.categories)
    s0, s1 = result.subject_range
    labels = [f"{'*' if s0 <= i < s1 else ' '} {tok!r}" for i, tok in enumerate(result.tokens)]
    return result.scores[kind].T, labels


def format_table(result: TraceResult | AverageEffect) -> str:
    """Plain-text tables (one per kind; rows: tokens or categories; columns: layers)."""
    lines = [summarise(result)]
    for kind in (result.effects if isinstance(result, AverageEffect) else result.scores):
        values, labels = _grid(result, kind)
        width = max(len(label) for label in labels)
        unit = "average indirect effect in %" if isinstance(result, AverageEffect) else \
            f"p({result.answer!r}) in %"
        lines.append("")
        lines.append(f"{KIND_LABELS[kind]} restored: {unit}; columns are layers")
        lines.append(" " * width + " " + "".join(f"{i:>4}" for i in range(values.shape[1])))
        for label, row in zip(labels, values, strict=True):
            cells = "".join("   -" if np.isnan(v) else f"{100 * v:>4.0f}" for v in row)
            lines.append(f"{label.ljust(width)} {cells}")
    return "\n".join(lines)


def save_heatmap(result: TraceResult | AverageEffect, path: str | Path) -> Path:
    """Write a PNG with one heatmap per kind (rows: tokens or categories; columns: layers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = list(result.effects if isinstance(result, AverageEffect) else result.scores)
    colours = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
    first_values, first_labels = _grid(result, kinds[0])
    height = 1.2 + 0.28 * len(first_labels)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), height), dpi=110, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        values, labels = _grid(result, kind)
        image = ax.imshow(values, aspect="auto", cmap=colours[kind], interpolation="nearest")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"restoring the {KIND_LABELS[kind]}", fontsize=8)
        bar = fig.colorbar(image, ax=ax, fraction=0.05)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("average indirect effect" if isinstance(result, AverageEffect)
                      else f"p({result.answer!r})", fontsize=7)
    fig.suptitle(textwrap.fill(summarise(result), 40 * len(kinds) + 30), fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
