"""Key covariances of an MLP output matrix: ``C = E[k k^T]`` over the inputs ``k`` the matrix sees.

ROME's update divides by ``C`` (:mod:`.rome`) and key preconditioning whitens a MEND update's keys
with ``C^-1`` (:mod:`.preconditioning`); both read it from here.

The second moment is estimated once per model, layer and text sample, and cached on disk under
``default_cache_dir()/rome`` (keyed by model identity, quantization, layer, text source and sample
count, plus a fingerprint of the matrix). The text (``covariance="auto"``) is the prompts and true
answers (and locality prompts and answers) of CounterFact's *training* file when the data folder
is present (``data/counterfact/counterfact-train.json``; never the test split), else the model's
own greedy continuations of a few seed prompts. ``covariance="identity"`` means ``C = I`` (no
estimate). The raw moment is cached; at use time it is regularised as
``C + cov_lambda * mean(diag C) * I`` (see :mod:`.rome` for why).
"""
from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.formats import load_records
from ..io_utils import atomic_file
from ..model.adapters import intervene
from ..model.backbone import Backbone, default_cache_dir
from ..model.generation import GenerationConfig, generate
from .patches import PatchEngine

log = logging.getLogger(__name__)

COVARIANCE_CHOICES = ("auto", "data", "generated", "identity")
COVARIANCE_SEEDS = (
    "The history of", "In the city of", "Scientists have found that", "The company announced",
    "She was born in", "The river flows", "Football is", "The language spoken in", "My favourite",
    "The museum", "During the war,", "The capital of", "He played the", "The novel was written by",
    "In mathematics,", "The band released", "The president of", "Music from", "The television",
    "The university of", "People in", "The film", "Religion in", "The mountain",
)
CF_TRAIN_FILE = Path("counterfact") / "counterfact-train.json"


@dataclass(frozen=True)
class CovarianceConfig:
    """What :func:`key_covariance` reads (:class:`~instructedit.editing.rome.RomeConfig` has the
    same fields, with these defaults).

    Attributes:
        covariance: ``auto``, ``data`` (CounterFact training text), ``generated`` or ``identity``.
        cov_texts: how many texts the covariance is estimated from; cov_max_tokens: per text.
        cov_lambda: ridge ``cov_lambda * mean(diag C)`` added to ``C``.
        data_dir: the data folder (``counterfact/counterfact-train.json`` inside).
    """

    covariance: str = "auto"
    cov_texts: int = 1000
    cov_max_tokens: int = 48
    cov_lambda: float = 0.01
    data_dir: str = "data"


_CACHE_LOCK = threading.Lock()


def right_padded(tokenizer, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded to one width: ``(input_ids, mask)``."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


@torch.no_grad()
def estimate_key_covariance(backbone: Backbone, layer: int, texts: Iterable[str], *,
                            max_tokens: int = 48, batch_size: int = 16) -> tuple[torch.Tensor, int]:
    """``E[k k^T]`` of the inputs of ``layer``'s MLP output matrix over every token of ``texts``.

    Runs blocks ``0..layer`` only, without active edits. Returns ``(C (in, in) float32 on the
    CPU, number of tokens)``.
    """
    adapter, model, tokenizer = backbone.adapter, backbone.model, backbone.tokenizer
    name = adapter.mlp_out_name(layer, model)
    n_in = adapter.in_out_features(backbone.module(name))[0]
    total = torch.zeros(n_in, n_in, dtype=torch.float64)
    count = 0
    batch: list[list[int]] = []
    mask_box: list[torch.Tensor] = []

    def record(x: torch.Tensor, out: torch.Tensor) -> None:
        nonlocal total, count
        keys = x[mask_box[0]].double().cpu()
        total += keys.t() @ keys
        count += keys.shape[0]

    def flush() -> None:
        ids, mask = right_padded(tokenizer, batch)
        mask_box[:] = [mask.to(backbone.device)]
        with PatchEngine.activate(None), intervene(model, {name: record}):
            adapter.run_blocks(model, adapter.embed(model, ids.to(backbone.device)), 0, layer + 1)
        batch.clear()

    for text in texts:
        ids = tokenizer(text)["input_ids"][:max_tokens]
        if ids:
            batch.append(ids)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if count == 0:
        raise ValueError("no text to estimate the key covariance from")
    return (total / count).float(), count


def covariance_texts(backbone: Backbone, source: str, n: int, data_dir: str | Path = "data",
                     seed: int = 0) -> tuple[list[str], str]:
    """Up to ``n`` texts for the key covariance and the name of their source (``data`` or
    ``generated``; ``auto`` picks ``data`` when CounterFact's training file is found)."""
    path = _find_data_file(data_dir)
    if source == "auto":
        source = "data" if path is not None else "generated"
    if source == "data":
        if path is None:
            raise FileNotFoundError(f"no {CF_TRAIN_FILE} under {data_dir!s} for the ROME covariance")
        records = load_records(path, task="counterfact", skip_invalid=True)
        texts = [f"{r.prompt} {r.ground_truth or r.target_new}" for r in records]
        texts += [f"{p.prompt} {p.answer}" for r in records for p in r.locality]
        random.Random(f"rome-cov:{seed}").shuffle(texts)
        return texts[:n], "data"
    if source != "generated":
        raise ValueError(f"unknown covariance text source {source!r}")
    seeds = list(COVARIANCE_SEEDS)
    with PatchEngine.activate(None):
        texts = generate(backbone, seeds, GenerationConfig(max_new_tokens=48))
    return [s + t for s, t in zip(seeds, texts, strict=True)][:n], "generated"


def _find_data_file(data_dir: str | Path) -> Path | None:
    for base in (Path(data_dir), Path(__file__).resolve().parents[2] / data_dir):
        if (base / CF_TRAIN_FILE).is_file():
            return base / CF_TRAIN_FILE
    return None


def _weight_fingerprint(backbone: Backbone, name: str) -> str:
    weight = backbone.adapter.weight_out_in(backbone.module(name)).float()
    numbers = [weight.sum().item(), weight.abs().sum().item(), weight[0, :8].tolist(), list(weight.shape)]
    return hashlib.sha256(repr(numbers).encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "model"


_COV_MEMORY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def key_covariance(backbone: Backbone, layer: int, config: CovarianceConfig | None = None, *,
                   cache_dir: str | Path | None = None) -> torch.Tensor | None:
    """The regularised key covariance of ``layer`` as ``config`` asks (None for ``identity``).

    ``config``: a :class:`CovarianceConfig` or anything with its fields (a
    :class:`~instructedit.editing.rome.RomeConfig`); None: the defaults. The raw moment is computed
    once and cached in memory and on disk (see the module docstring).
    """
    config = config or CovarianceConfig()
    if config.covariance == "identity":
        return None
    name = backbone.adapter.mlp_out_name(layer, backbone.model)
    source = config.covariance
    if source == "auto":
        source = "data" if _find_data_file(config.data_dir) is not None else "generated"
    cfg = backbone.config
    ident = (f"{backbone.model_id}|{backbone.source}|{cfg.quant}|{cfg.dtype}|{cfg.compute_dtype}|"
             f"{name}|{source}|{config.cov_texts}|{config.cov_max_tokens}|"
             f"{_weight_fingerprint(backbone, name)}")
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    with _CACHE_LOCK:
        raw = _COV_MEMORY.get(backbone.model, {}).get(digest)
    if raw is None:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "rome"
        file = folder / f"{_slug(backbone.model_id)}-{cfg.quant}-layer{layer}-{source}-n{config.cov_texts}-{digest}.pt"
        raw = _load_covariance(file)
        if raw is None:
            start = time.perf_counter()
            texts, _ = covariance_texts(backbone, source, config.cov_texts, config.data_dir)
            raw, n_tokens = estimate_key_covariance(backbone, layer, texts, max_tokens=config.cov_max_tokens)
            log.info("ROME key covariance of %s from %d tokens (%s) in %.1f s", name, n_tokens,
                     source, time.perf_counter() - start)
            _save_covariance(file, raw, {"ident": ident, "tokens": n_tokens})
        with _CACHE_LOCK:
            _COV_MEMORY.setdefault(backbone.model, {})[digest] = raw
    return regularised(raw, config.cov_lambda)


def regularised(moment: torch.Tensor, cov_lambda: float) -> torch.Tensor:
    """``C + cov_lambda * mean(diag C) * I``."""
    ridge = cov_lambda * moment.diagonal().mean().clamp_min(1e-12)
    return moment + ridge * torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)


def _load_covariance(file: Path) -> torch.Tensor | None:
    if not file.is_file():
        return None
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
        return data["moment"].float()
    except Exception as exc:  # noqa: BLE001 - a bad cache file is recomputed
        log.warning("ignoring unreadable ROME covariance cache %s: %s", file, exc)
        return None


def _save_covariance(file: Path, moment: torch.Tensor, meta: dict) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(file) as tmp:
            torch.save({"moment": moment.contiguous(), **meta}, tmp)
    except OSError as exc:
        log.warning("could not cache the ROME covariance in %s: %s", file, exc)
