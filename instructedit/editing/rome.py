"""ROME: rank-one model editing of one MLP output matrix (Meng et al. 2022, "Locating and Editing
Factual Associations in GPT", NeurIPS), written from the paper for this package's patch engine.

The MLP output projection of one middle layer ``W`` (LLaMA ``mlp.down_proj``, GPT-2 ``mlp.c_proj``;
the adapter names it) is read as a linear key-value memory: its input at the subject's last token
is a key ``k`` that stands for the subject, its output a value that carries facts about it.
An edit of ``(prompt, subject, target)``:

1. **Key** ``k*``: the input of ``W`` at the subject's last token, averaged over the prompt alone
   and the prompt after a few short prefixes (``"{prefix}. {prompt}"``; the prefixes are the
   model's own greedy continuations of a few seed phrases, or fixed texts from the config).
2. **Value**: a vector ``delta`` added to the output of ``W`` at the subject's last token of every
   prefixed prompt is optimised (Adam, ``v_steps`` steps of ``v_lr``) to minimise the target's
   teacher-forced NLL, plus ``kl_weight`` times ``KL(p_new || p_old)`` of the next-token
   distribution after ``"{subject} is a"`` (with ``delta`` at its subject too: the subject's
   essence must not drift), plus ``weight_decay * |delta|^2 / |v0|^2``; after every step
   ``|delta|`` is clamped to ``clamp_norm_factor * |v0|`` (``v0``: the unedited output of ``W``
   at the subject's last token, averaged over the prompts). A record stops early once its NLL
   is below ``stop_nll``. ``v* = W k* + delta`` (``W`` with the active edits).
3. **Update**: ``dW = (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)`` with ``C = E[k k^T]``, so
   ``W' k* = v*`` exactly while keys uncorrelated with ``k*`` under ``C`` change least. Here
   ``v* - W k* = delta``, so the update never reads ``W``: it works unchanged on 8/4-bit layers.

The update is stored as a rank-one :class:`~instructedit.editing.patches.Patch`: ``u = C^-1 k* / (k*^T
C^-1 k*)`` (1, in), ``d = delta`` (1, out), ``scale = 1``, whose hook adds ``(x @ u^T) @ d``
(``dW = D^T U`` in (out, in) orientation). The base weights are never modified: undo is leaving
the patch context (bitwise), edits stack, sessions stay isolated, as for every other editor.

**The key covariance** ``C`` (second moment of ``W``'s inputs over every token of some text;
:mod:`.covariance`) is estimated once per model, layer and text sample, and cached on disk under
``default_cache_dir()/rome`` (keyed by model identity, quantization, layer, text source and
sample count, plus a fingerprint of ``W``). The text (``covariance="auto"``) is the prompts and
true answers (and locality prompts and answers) of CounterFact's *training* file when the data
folder is present (``data/counterfact/counterfact-train.json``; never the test split), else the
model's own greedy continuations of a few seed prompts (fewer tokens; the regulariser matters
more). ``covariance="identity"`` uses ``C = I`` (the update is then the minimum-norm one, as in
the paper's ablation; the tests use it). The raw moment is cached; at use time it is regularised
as ``C + cov_lambda * mean(diag C) * I``: the estimate from a few thousand tokens is
ill-conditioned in the MLP's wide key space (1536 dimensions for SmolLM2-135M), a scale-free
ridge keeps ``C^-1 k*`` from being dominated by the noise directions of rarely seen keys, and
``cov_lambda = 0.01`` leaves well-sampled directions essentially untouched.

Which layer: :data:`TRACED_LAYERS` (from ``python -m instructedit trace --records``: the layer
whose MLP, restored at the last subject token, recovers most of the answer, the first MLP left
out) when the model has an entry, else ``num_layers // 3``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..model.adapters import intervene
from ..model.backbone import Backbone
from ..scoring import AnswerBatch, answer_logits_from_hidden, score_answers, tokenize_answers
from .contexts import context_prefixes, prefixed
from .covariance import COVARIANCE_CHOICES, CovarianceConfig, key_covariance, right_padded
from .editor import MAX_TARGET_TOKENS, Edit, EditError, EditRequest, validate_request
from .keying import find_subject, subject_token_span
from .patches import LayerPatch, Patch, PatchEngine

log = logging.getLogger(__name__)

__all__ = ["RomeConfig", "RomeRequest", "RomeResult", "RomeEditor", "SubjectError", "TRACED_LAYERS",
           "compute_rome", "compute_rome_patches", "default_layer", "context_prefixes",
           "subject_span", "requests_from_records", "rank_one_patch"]

TRACED_LAYERS: dict[str, int] = {
    # python -m instructedit trace --model smollm2-135m --records data/counterfact --limit 20
    # (20 known facts of the test split, MLP windows of 5 at the last subject token): the first
    # MLPs (layers 0-2) recover most (+0.041), then a second peak at layer 6 (+0.022); layer 6
    # also had the best paraphrase success (8/8) and the least locality drift among layers 3, 6,
    # 10 and 14 on 8 CounterFact test edits.
    "HuggingFaceTB/SmolLM2-135M-Instruct": 6,
}
"""model_id -> the ROME layer chosen by averaged causal tracing (``trace --records``: its
``rome_layer``, the best MLP restoration at the last subject token, the first MLP left out)."""

# Multi-word seeds: small models continue a lone word at the start of a text badly ("The-the-...").


class SubjectError(EditError):
    """The subject is missing or does not occur in the prompt; nothing changed."""


@dataclass(frozen=True)
class RomeConfig:
    """Settings of a ROME edit (see the module docstring for what each step does).

    Attributes:
        layer: the edited block (None: :func:`default_layer`).
        v_steps, v_lr: Adam steps and learning rate of the value optimisation.
        kl_weight: weight of the KL term on ``kl_template`` (essence drift).
        weight_decay: weight of ``|delta|^2 / |v0|^2``; clamp_norm_factor: ``|delta| <= f |v0|``.
        stop_nll: a record stops once its target NLL (mean per token) is below this.
        n_prefixes, prefix_tokens: prefixes generated by the model (greedy, from seed phrases).
        prefixes: fixed prefix texts instead of generated ones (``()``: the bare prompt only).
        kl_template: the essence prompt, ``{}`` is the subject.
        covariance: ``auto``, ``data`` (CounterFact training text), ``generated`` or ``identity``.
        cov_texts: how many texts the covariance is estimated from; cov_max_tokens: per text.
        cov_lambda: ridge ``cov_lambda * mean(diag C)`` added to ``C``.
        data_dir: the data folder (``counterfact/counterfact-train.json`` inside).
    """

    layer: int | None = None
    v_steps: int = 25
    v_lr: float = 0.5
    kl_weight: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    stop_nll: float = 0.05
    n_prefixes: int = 5
    prefix_tokens: int = 8
    prefixes: tuple[str, ...] | None = None
    kl_template: str = "{} is a"
    covariance: str = CovarianceConfig.covariance
    cov_texts: int = CovarianceConfig.cov_texts
    cov_max_tokens: int = CovarianceConfig.cov_max_tokens
    cov_lambda: float = CovarianceConfig.cov_lambda
    data_dir: str = CovarianceConfig.data_dir

    def __post_init__(self) -> None:
        if self.covariance not in COVARIANCE_CHOICES:
            raise ValueError(f"covariance must be one of {COVARIANCE_CHOICES}, got {self.covariance!r}")
        if self.v_steps < 1 or self.v_lr <= 0:
            raise ValueError("v_steps must be at least 1 and v_lr positive")
        if min(self.kl_weight, self.weight_decay, self.cov_lambda) < 0 or self.clamp_norm_factor <= 0:
            raise ValueError("kl_weight, weight_decay and cov_lambda must be >= 0, clamp_norm_factor > 0")
        if self.n_prefixes < 0 or self.prefix_tokens < 1 or self.cov_texts < 1:
            raise ValueError("n_prefixes must be >= 0, prefix_tokens and cov_texts >= 1")
        if self.kl_template.count("{}") != 1:
            raise ValueError(f"kl_template needs exactly one '{{}}' for the subject, got {self.kl_template!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RomeRequest:
    """One ROME edit: ``prompt`` (containing ``subject``) should continue with ``target``."""

    prompt: str
    subject: str
    target: str


@dataclass
class RomeResult:
    """One computed edit: its patch and what went into it (float32 vectors on the CPU)."""

    request: RomeRequest
    module: str
    patch: Patch
    key: torch.Tensor      # k* (in,)
    value: torch.Tensor    # v* = W k* + delta (out,)
    delta: torch.Tensor    # (out,)
    nll_before: float      # target NLL (mean per token, over the prefixed prompts) before
    nll_after: float       # the same at the last evaluated step
    steps: int             # optimiser steps taken


# ----- subjects ----------------------------------------------------------------------------------
def subject_span(tokenizer, text: str, subject: str, char_start: int | None = None) -> tuple[int, int]:
    """Token positions ``[start, end)`` of ``subject`` in ``tokenizer(text)["input_ids"]``.

    ``char_start``: where the subject starts in ``text`` (default: its last occurrence). Raises
    :class:`SubjectError` when the subject is empty or not in the text.
    """
    subject = (subject or "").strip()
    if not subject:
        raise SubjectError("the subject is empty: name the entity the fact is about")
    if (char_start if char_start is not None else find_subject(text, subject)) < 0:
        raise SubjectError(f"the subject {subject!r} does not occur in the prompt {text!r}")
    span = subject_token_span(tokenizer, text, subject, char_start)
    if span is None:
        raise SubjectError(f"the subject {subject!r} covers no token of {text!r}")
    return span


def resolve_subject(request: EditRequest, subject: str | None = None) -> str:
    """The subject of a ROME edit: ``subject``, else the request's ``subject``, else its topic,
    else an error."""
    candidates = (subject, request.subject, request.topic)
    chosen = next((c for c in candidates if c is not None and c.strip()), None)
    if chosen is None or not chosen.strip():
        raise SubjectError("ROME needs the subject of the edit (the entity whose fact changes, "
                           "e.g. 'Eiffel Tower' in 'The Eiffel Tower is located in'): pass subject=")
    if find_subject(request.prompt, chosen.strip()) < 0:
        raise SubjectError(f"the subject {chosen.strip()!r} does not occur in the prompt "
                           f"{request.prompt.strip()!r}")
    return chosen.strip()


def requests_from_records(records: Iterable[Any]) -> list[RomeRequest]:
    """:class:`RomeRequest` s from :class:`~instructedit.data.records.EditRecord` s."""
    return [RomeRequest(r.prompt, r.subject, r.target_new) for r in records]


# ----- layer, prefixes ---------------------------------------------------------------------------
def default_layer(backbone: Backbone) -> int:
    """The traced layer of the model (:data:`TRACED_LAYERS`), else ``num_layers // 3``."""
    n = backbone.adapter.num_layers(backbone.model)
    traced = TRACED_LAYERS.get(backbone.model_id)
    if traced is not None and 0 <= traced < n:
        return traced
    return n // 3


def _prefixed(prompt: str, prefixes: Sequence[str]) -> list[str]:
    return [prompt] + [prefixed(prompt, p) for p in prefixes]


# ----- the update --------------------------------------------------------------------------------
def rank_one_patch(module: str, key: torch.Tensor, delta: torch.Tensor,
                   covariance: torch.Tensor | None = None) -> Patch:
    """The patch ``dW = delta (C^-1 k)^T / ((C^-1 k)^T k)`` (``C = I`` when None): ``W' k = W k + delta``."""
    k = key.double().flatten()
    c = k if covariance is None else torch.linalg.solve(covariance.double().to(k.device), k)
    denom = torch.dot(c, k)
    if not torch.isfinite(denom) or denom.abs() < 1e-30:
        raise EditError("the subject's key is degenerate (zero under the key covariance); "
                        "nothing changed")
    u = (c / denom).float().unsqueeze(0)
    d = delta.detach().float().flatten().unsqueeze(0).to(u.device)
    patch = Patch({module: LayerPatch(u, d, torch.tensor(1.0, device=u.device))})
    patch.check_finite()
    return patch


# ----- the value optimisation --------------------------------------------------------------------
@dataclass
class _Rows:
    """The token rows of a chunk of requests: rewriting rows first, then one KL row each."""

    input_ids: torch.Tensor
    answers: Any                      # AnswerBatch of the rewriting rows
    subject_pos: torch.Tensor         # (rows,) last subject token of every row
    record_of_row: torch.Tensor       # (rows,)
    kl_rows: torch.Tensor             # (records,)
    kl_pos: torch.Tensor              # (records,) last token of each KL row
    n_rewrite: int
    rewrite_counts: torch.Tensor      # (records,) rewriting rows of each record


def _build_rows(backbone: Backbone, requests: Sequence[RomeRequest], prefixes: Sequence[str],
                kl_template: str) -> _Rows:
    tokenizer = backbone.tokenizer
    texts, targets, positions, owners = [], [], [], []
    for r, req in enumerate(requests):
        prompt = req.prompt.strip()
        at = find_subject(prompt, req.subject)
        if at < 0:
            raise SubjectError(f"the subject {req.subject!r} does not occur in the prompt {prompt!r}")
        for text in _prefixed(prompt, prefixes):
            texts.append(text)
            targets.append(req.target)
            positions.append(subject_span(tokenizer, text, req.subject, len(text) - len(prompt) + at)[1] - 1)
            owners.append(r)
    answers = tokenize_answers(tokenizer, texts, targets, max_answer_tokens=MAX_TARGET_TOKENS)
    kl_ids, kl_pos = [], []
    for req in requests:
        text = kl_template.format(req.subject.strip())
        kl_ids.append(tokenizer(text)["input_ids"])
        positions.append(subject_span(tokenizer, text, req.subject, kl_template.index("{}"))[1] - 1)
        kl_pos.append(len(kl_ids[-1]) - 1)
    ids = right_padded(tokenizer, [row[row_mask.bool()].tolist() for row, row_mask in
                                    zip(answers.input_ids, answers.attention_mask, strict=True)] + kl_ids)[0]
    owners += list(range(len(requests)))
    device = backbone.device
    counts = torch.bincount(torch.tensor(owners[: len(texts)]), minlength=len(requests))
    return _Rows(ids.to(device), answers.to(device), torch.tensor(positions, device=device),
                 torch.tensor(owners, device=device),
                 torch.arange(len(texts), len(texts) + len(requests), device=device),
                 torch.tensor(kl_pos, device=device), len(texts), counts.to(device))


def _optimise_values(backbone: Backbone, layer: int, rows: _Rows, config: RomeConfig,
                     n_records: int) -> tuple[torch.Tensor, ...]:
    """Returns ``(keys (R, in), deltas (R, out), nll_before (R,), nll_after (R,), steps (R,),
    the dtype the module's inputs arrive in)``.

    The states entering ``layer`` are computed once; every step runs the blocks from ``layer``
    on the rows of the records that have not stopped yet.
    """
    adapter, model = backbone.adapter, backbone.model
    name = adapter.mlp_out_name(layer, model)
    n_out = adapter.in_out_features(backbone.module(name))[1]
    device = backbone.device
    n_rows = rows.input_ids.shape[0]
    with torch.no_grad():
        hidden_in = adapter.hidden_before_layer(model, rows.input_ids, layer)
    delta = torch.zeros(n_records, n_out, device=device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=config.v_lr)
    seen: dict[str, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def inject(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        index = (torch.arange(out.shape[0], device=out.device), current["pos"])
        if "keys" not in seen:  # step 0 runs every row
            seen["keys"], seen["values"] = x[index].detach().float(), out[index].detach().float()
            seen["dtype"] = x.dtype
        return out.index_put(index, delta[current["owner"]].to(out.dtype), accumulate=True)

    done = torch.zeros(n_records, dtype=torch.bool, device=device)
    frozen = torch.zeros(n_records, n_out, device=device)
    nll_last = torch.zeros(n_records, device=device)
    steps = torch.zeros(n_records, dtype=torch.long, device=device)
    base_kl = v0_norm = nll_before = None
    answers = rows.answers
    rewrite_owner = rows.record_of_row[: rows.n_rewrite]
    for step in range(config.v_steps):
        live = (~done).nonzero().squeeze(1)
        row_live = (~done)[rows.record_of_row]
        sel = row_live.nonzero().squeeze(1)
        new_index = torch.full((n_rows,), -1, dtype=torch.long, device=device)
        new_index[sel] = torch.arange(len(sel), device=device)
        keep = row_live[answers.rows]
        sub = AnswerBatch(rows.input_ids[sel], rows.input_ids[sel], new_index[answers.rows[keep]],
                          answers.positions[keep], answers.answer_tokens[keep], [])
        current["owner"], current["pos"] = rows.record_of_row[sel], rows.subject_pos[sel]
        with torch.enable_grad(), intervene(model, {name: inject}):
            hidden = adapter.run_from_layer(model, hidden_in[sel], layer)
            nll_rows = score_answers(answer_logits_from_hidden(model, hidden, sub), sub).mean_nll
            is_rewrite = sel < rows.n_rewrite
            nll = torch.zeros(n_records, device=device).index_add(
                0, current["owner"][is_rewrite], nll_rows[is_rewrite]) / rows.rewrite_counts.clamp_min(1)
            kl_logp = F.log_softmax(model.get_output_embeddings()(
                hidden[new_index[rows.kl_rows[live]], rows.kl_pos[live]]).float(), dim=-1)
        if step == 0:
            base_kl = kl_logp.detach()
            nll_before = nll.detach().clone()
            v0 = _mean_rows(seen["values"][: rows.n_rewrite], rewrite_owner, n_records)
            v0_norm = v0.norm(dim=-1).clamp_min(1e-6)
        nll_last[live] = nll.detach()[live]
        newly = (~done) & (nll_last < config.stop_nll)
        frozen[newly] = delta.detach()[newly]
        done |= newly
        if bool(done.all()):
            break
        going = ~done[live]  # of the live records, those that take this step
        kl = (kl_logp.exp() * (kl_logp - base_kl[live])).sum(-1)
        decay = delta[live].pow(2).sum(-1) / v0_norm[live].pow(2)
        loss = ((nll[live] + config.kl_weight * kl + config.weight_decay * decay) * going).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps[~done] += 1
        with torch.no_grad():
            limit = config.clamp_norm_factor * v0_norm
            norms = delta.norm(dim=-1).clamp_min(1e-12)
            delta.mul_(torch.where(norms > limit, limit / norms, torch.ones_like(norms)).unsqueeze(1))
            delta[done] = frozen[done]
    keys = _mean_rows(seen["keys"][: rows.n_rewrite], rewrite_owner, n_records)
    return keys, delta.detach(), nll_before, nll_last, steps, seen["dtype"]


def _mean_rows(values: torch.Tensor, owners: torch.Tensor, n: int) -> torch.Tensor:
    """Row ``r``: the mean of the ``values`` rows whose owner is ``r``."""
    out = torch.zeros(n, values.shape[1], dtype=values.dtype, device=values.device)
    return out.index_reduce_(0, owners, values, "mean", include_self=False)


def compute_rome(backbone: Backbone, requests: Sequence[RomeRequest | tuple[str, str, str]],
                 config: RomeConfig | None = None, covariance: torch.Tensor | str | None = None, *,
                 batch_size: int = 8, active: Sequence[Patch] = ()) -> list[RomeResult]:
    """ROME edits of many ``(prompt, subject, target)`` at once, each independent of the others.

    Requests are optimised ``batch_size`` at a time in one batch (every record has its own
    ``delta`` and stops on its own), with the ``active`` patches applied (edits stack).
    ``covariance``: a (regularised) key second moment (in, in) used as is, ``"identity"``, or
    None for :func:`key_covariance` of ``config``. Raises :class:`SubjectError` for a subject
    that is not in its prompt (before any work).
    """
    config = config or RomeConfig()
    reqs = [r if isinstance(r, RomeRequest) else RomeRequest(*r) for r in requests]
    for req in reqs:
        if find_subject(req.prompt.strip(), (req.subject or "").strip() or "\0") < 0:
            raise SubjectError(f"the subject {req.subject!r} does not occur in the prompt {req.prompt!r}")
    if not reqs:
        return []
    layer = config.layer if config.layer is not None else default_layer(backbone)
    name = backbone.adapter.mlp_out_name(layer, backbone.model)
    PatchEngine.for_model(backbone.model, [name])
    if isinstance(covariance, str):
        if covariance != "identity":
            raise ValueError(f"covariance must be a tensor, 'identity' or None, got {covariance!r}")
        cov = None
    else:
        cov = covariance if covariance is not None else key_covariance(backbone, layer, config)
    prefixes = config.prefixes if config.prefixes is not None else context_prefixes(
        backbone, config.n_prefixes, config.prefix_tokens)
    results: list[RomeResult] = []
    with PatchEngine.activate(list(active)):
        for start in range(0, len(reqs), batch_size):
            chunk = reqs[start: start + batch_size]
            rows = _build_rows(backbone, chunk, prefixes, config.kl_template)
            keys, deltas, before, after, steps, dtype = _optimise_values(backbone, layer, rows, config,
                                                                         len(chunk))
            with torch.no_grad():
                base = backbone.module(name)(keys.to(dtype)).float()
            for i, req in enumerate(chunk):
                patch = rank_one_patch(name, keys[i], deltas[i], cov)
                results.append(RomeResult(req, name, patch, keys[i].cpu(), (base[i] + deltas[i]).cpu(),
                                          deltas[i].cpu(), float(before[i]), float(after[i]), int(steps[i])))
    return results


def compute_rome_patches(backbone: Backbone, requests: Sequence[RomeRequest | tuple[str, str, str]],
                         config: RomeConfig | None = None, covariance: torch.Tensor | str | None = None,
                         *, batch_size: int = 8) -> list[Patch]:
    """One rank-one :class:`Patch` per ``(prompt, subject, target)`` (see :func:`compute_rome`)."""
    return [r.patch for r in compute_rome(backbone, requests, config, covariance, batch_size=batch_size)]


# ----- the editor --------------------------------------------------------------------------------
class RomeEditor:
    """A ROME editor bound to one backbone, with the interface of :class:`~instructedit.editing.editor.Editor`.

    ``covariance``: a key second moment (used as is), ``"identity"``, or None (estimated lazily
    as ``config.covariance`` says, and cached).
    """

    name = "rome"
    use_instructions = False
    needs_subject = True
    patch_rank = 1

    def __init__(self, backbone: Backbone, config: RomeConfig | None = None,
                 covariance: torch.Tensor | str | None = None) -> None:
        self.backbone = backbone
        self.config = config or RomeConfig()
        self.layer = self.config.layer if self.config.layer is not None else default_layer(backbone)
        self.module_names = [backbone.adapter.mlp_out_name(self.layer, backbone.model)]
        self.engine = PatchEngine.for_model(backbone.model, self.module_names)
        self._covariance = covariance
        self._lock = threading.Lock()
        self.metadata = {"method": "ROME (Meng et al. 2022)", "layer": self.layer,
                         "module": self.module_names[0], "config": self.config.to_dict()}

    def covariance(self) -> torch.Tensor | None:
        """The key covariance used (None: identity); computed once, on first use."""
        cov = self._covariance_arg()
        return None if isinstance(cov, str) else cov

    def _covariance_arg(self) -> torch.Tensor | str:
        with self._lock:
            if self._covariance is None:
                cov = key_covariance(self.backbone, self.layer, self.config)
                self._covariance = "identity" if cov is None else cov
            return self._covariance

    def _config(self) -> RomeConfig:
        return replace(self.config, layer=self.layer)

    def edit(self, request: EditRequest, active: Sequence[Edit] = (), *,
             subject: str | None = None) -> Edit:
        """The ROME edit of ``request`` about ``subject`` (default: ``request.subject``, then
        ``request.topic``), with the ``active`` edits applied (they stack), as
        :meth:`~instructedit.editing.editor.Editor.edit`.

        Raises :class:`~instructedit.editing.editor.EditError` (a :class:`SubjectError` for a missing
        subject or one not in the prompt) and
        :class:`~instructedit.editing.patches.NonFiniteEditError`; in both cases nothing changes.
        """
        start = time.perf_counter()
        validate_request(request, self.backbone.tokenizer)
        chosen = resolve_subject(request, subject)
        prompt = request.prompt.strip()
        result = compute_rome(self.backbone, [RomeRequest(prompt, chosen, request.target.strip())],
                              self._config(), self._covariance_arg(), active=[e.patch for e in active])[0]
        latency = (time.perf_counter() - start) * 1000
        return Edit(request, prompt, result.patch, self.name, self.backbone.model_id, latency)

    def patches(self, requests: Sequence[RomeRequest | tuple[str, str, str]], *,
                batch_size: int = 8) -> list[Patch]:
        """One patch per ``(prompt, subject, target)``, each from the unedited model."""
        return compute_rome_patches(self.backbone, requests, self._config(), self._covariance_arg(),
                                    batch_size=batch_size)
