"""Section 2: greedy generation speed with 0, 1, 10 and 50 active edits, and the decoding paths.

Each timed run generates exactly ``new_tokens`` tokens (end-of-sequence suppressed) from one
prompt at batch size 1, under the active patches, through the decoder the studio uses (the
lean loop of :mod:`instructedit.model.decoding`, on a CPU 4-bit model with its packed kernel). Counts are interleaved within each repeat.
Measured for the edits as the editor stores them (rank-truncated, see
:data:`~instructedit.defaults.DEFAULT_PATCH_RANK`) and at full rank: a full-rank edit has ~30
factor rows per matrix, so 50 of them are a rank-1,500 update, wider than the model.

:func:`measure_decoding` compares the decoding paths under one active edit (``model.generate``,
the path before the lean loop, against the lean loop) and puts them beside this machine's bounds
(:func:`decode_bounds`): the weights' bytes read per token over the measured memory bandwidth, the
FLOPs per token over the measured matmul throughput, and a pass of every weight matrix once over a
one-token input with the model's own kernels (what a step cannot beat with these kernels).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..editing.patches import Patch, PatchEngine
from ..model import packed4bit
from ..model.backbone import Backbone
from ..model.decoding import greedy_new_tokens
from .profiling import top_ops
from .stats import summarize

log = logging.getLogger(__name__)


@torch.no_grad()
def exact_tokens(backbone: Backbone, prompt: str, new_tokens: int, lean: bool = True) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens after ``prompt`` (end of sequence suppressed), through
    the lean decoder as the studio runs it (a CPU 4-bit model's layers through the packed kernel:
    ``fast_4bit``) or (``lean=False``) ``model.generate``."""
    ids = torch.tensor([backbone.tokenizer(prompt)["input_ids"]], device=backbone.device)
    return greedy_new_tokens(backbone.model, ids, torch.ones_like(ids), new_tokens,
                             backbone.tokenizer.pad_token_id, min_new_tokens=new_tokens, lean=lean,
                             packed_4bit=lean)


def generate_exact(backbone: Backbone, prompt: str, new_tokens: int, lean: bool = True) -> int:
    """Greedy-generate exactly ``new_tokens`` tokens after ``prompt``; returns the count."""
    return int(exact_tokens(backbone, prompt, new_tokens, lean).shape[1])


def _timed_generation(backbone: Backbone, prompt: str, new_tokens: int,
                      patches: Sequence[Patch], lean: bool = True) -> float:
    with PatchEngine.activate(list(patches)):
        start = time.perf_counter()
        produced = generate_exact(backbone, prompt, new_tokens, lean)
        seconds = time.perf_counter() - start
    if produced != new_tokens:
        raise RuntimeError(f"generated {produced} tokens instead of {new_tokens}")
    return seconds


def goal_count(counts: Sequence[int], wanted: int = 10) -> int:
    """The count the overhead goal is judged at: ``wanted`` or the largest count below it."""
    below = [c for c in counts if 0 < c <= wanted]
    return max(below) if below else max(counts)


def measure_generation(backbone: Backbone, variants: Mapping[str, Sequence[Patch]],
                       counts: Sequence[int], new_tokens: int, repeats: int, prompt: str,
                       goal: float = 0.05, profile_top: int = 8) -> dict:
    """Tokens/s per active-edit count for each variant of the same edits; overheads vs 0 edits.

    ``variants`` maps a name to the edits' patches in that form (the first is the form the app
    uses, which the goal is judged on). Patches go through :meth:`PatchEngine.activate` exactly as
    in the app, which folds the active edits into one factor pair per module.
    """
    counts = sorted(set(counts))
    names = list(variants)
    for name, patches in variants.items():
        if max(counts) > len(patches):
            raise ValueError(f"need {max(counts)} edits, got {len(patches)} ({name})")
    stored = names[0]
    sets = {name: {c: list(variants[name][:c]) for c in counts} for name in names}
    seconds: dict[str, dict[int, list[float]]] = {v: {c: [] for c in counts} for v in names}
    for c in counts:  # warm-up: first runs pay for allocations
        _timed_generation(backbone, prompt, new_tokens, sets[stored][c])
    for _ in range(repeats):
        for c in counts:
            for name in names:
                if name != stored and c == 0:
                    continue
                seconds[name][c].append(_timed_generation(backbone, prompt, new_tokens, sets[name][c]))
    for name in names:
        seconds[name][0] = seconds[stored][0]
    result: dict = {"new_tokens": new_tokens, "repeats": repeats, "goal": goal, "variants": names}
    for name in names:
        tps = {str(c): summarize(seconds[name][c]).inverse(new_tokens).to_dict() for c in counts}
        base = summarize(seconds[name][0]).median
        overhead = {str(c): round(summarize(seconds[name][c]).median / base - 1, 4)
                    for c in counts if c}
        rows = {str(c): _rows(sets[name][c]) for c in counts}
        result[name] = {"tokens_per_s": tps, "overhead": overhead, "factor_rows": rows}
    at = goal_count(counts)
    result["goal_count"] = at
    result["met"] = result[stored]["overhead"][str(at)] <= goal
    if not result["met"]:
        log.info("generation overhead at %d edits above %.0f%%: profiling", at, goal * 100)
        result["profile"] = {
            "with_edits": top_ops(lambda: _timed_generation(backbone, prompt, new_tokens,
                                                            sets[stored][at]), profile_top),
            "no_edits": top_ops(lambda: _timed_generation(backbone, prompt, new_tokens, []),
                                profile_top)}
    return result


def _rows(patches: Sequence[Patch]) -> int:
    """Factor rows per module once ``patches`` are combined (the width of the hook's matmuls)."""
    if not patches:
        return 0
    return max(sum(p.layers[n].u.shape[0] for p in patches if n in p.layers)
               for n in patches[0].layers)


# ----- decoding paths and this machine's bounds -------------------------------------------------
_MATMUL_TYPES = ("Linear", "Conv1D", "Linear4bit", "Linear8bitLt")


def _matmul_modules(model: nn.Module) -> list[tuple[nn.Module, int, int]]:
    """(module, in features, weights) of every weight matrix a decoding step multiplies by."""
    found = []
    for module in model.modules():
        if type(module).__name__ not in _MATMUL_TYPES or getattr(module, "weight", None) is None:
            continue
        state = getattr(module.weight, "quant_state", None)
        if type(module).__name__ == "Conv1D":  # GPT-2: (in, out) weights
            n_in, count = module.weight.shape[0], module.weight.numel()
        else:
            n_in = module.in_features
            count = int(torch.Size(state.shape).numel()) if state is not None else module.weight.numel()
        found.append((module, int(n_in), int(count)))
    return found


def _tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decoding step reads: every parameter once (tied ones once) with the
    4-bit and 8-bit layers' scales, less an untied input embedding (a step reads one row of it)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += _tensor_bytes(p)
        state = getattr(p, "quant_state", None)
        if state is not None:
            total += _tensor_bytes(state.absmax) + _tensor_bytes(getattr(state, "code", None))
            inner = getattr(state, "state2", None)
            total += _tensor_bytes(getattr(inner, "absmax", None)) if inner is not None else 0
        total += _tensor_bytes(getattr(p, "SCB", None))
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embed is not None and (head is None or head.weight.data_ptr() != embed.weight.data_ptr()):
        total -= _tensor_bytes(embed.weight)
    return total


def flops_per_token(model: nn.Module, context: int) -> int:
    """Multiply-adds x 2 of one decoding step: every weight matrix once, plus attention over
    ``context`` earlier tokens (scores and weighted values, per layer)."""
    weights = sum(count for _, _, count in _matmul_modules(model))
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    return int(2 * weights + 4 * layers * hidden * context)


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth(mib: int = 256, repeats: int = 5) -> dict:
    """Peak bytes/s of a large float32 copy (bytes read + written) and of a large sum (read)."""
    src = torch.ones(mib * 2 ** 20 // 4)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), repeats)
    read_s = _best_seconds(lambda: src.sum(), repeats)
    size = src.numel() * 4
    return {"mib": mib, "copy_gb_per_s": round(2 * size / copy_s / 1e9, 2),
            "read_gb_per_s": round(size / read_s / 1e9, 2)}


def matmul_throughput(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """Peak FLOP/s of an ``n`` x ``n`` matmul in ``dtype``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / _best_seconds(lambda: a @ b, repeats)


def _compute_dtype(backbone: Backbone) -> torch.dtype:
    return backbone.model.get_input_embeddings().weight.dtype


@torch.no_grad()
def kernels_only_seconds(backbone: Backbone, repeats: int = 5) -> float:
    """Median seconds of one pass of every weight matrix over a one-token input with the model's own
    kernels (the 4-bit layers through the decoder's route), no patches: the weights' part of a
    decoding step, which no decoding loop around these kernels can beat."""
    modules = _matmul_modules(backbone.model)
    dtype = _compute_dtype(backbone)
    inputs = [torch.randn(1, 1, n_in, device=backbone.device).to(dtype) for _, n_in, _ in modules]

    def one_pass() -> None:
        for (module, _, _), x in zip(modules, inputs, strict=True):
            module(x)

    with PatchEngine.activate(None), packed4bit.decode_route():
        one_pass()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            one_pass()
            times.append(time.perf_counter() - start)
    return summarize(times).median


def decode_bounds(backbone: Backbone, context: int) -> dict:
    """This machine's tokens/s bounds for one decoding step of ``backbone`` (see the module doc)."""
    model = backbone.model
    if backbone.device.type == "cpu":
        packed4bit.enable(model)  # the route the decoder takes: measure its kernels
    dtype = _compute_dtype(backbone)
    bandwidth = memory_bandwidth()
    flops = matmul_throughput(dtype)
    nbytes = weight_bytes_per_token(model)
    per_token_flops = flops_per_token(model, context)
    kernels_s = kernels_only_seconds(backbone)
    return {"weight_bytes_per_token": nbytes, "flops_per_token": per_token_flops, "context": context,
            "bandwidth": bandwidth, "matmul_flops_per_s": round(flops), "matmul_dtype": str(dtype),
            "bandwidth_bound_tokens_per_s": round(bandwidth["read_gb_per_s"] * 1e9 / nbytes, 1),
            "compute_bound_tokens_per_s": round(flops / per_token_flops, 1),
            "kernels_only_s": kernels_s,
            "kernels_only_tokens_per_s": round(1 / kernels_s, 1),
            "kernels_gb_per_s": round(nbytes / kernels_s / 1e9, 2)}


def measure_decoding(backbone: Backbone, patches: Sequence[Patch], prompt: str, new_tokens: int,
                     repeats: int, goal: float = 3.0, profile_top: int = 8) -> dict:
    """Tokens/s of ``model.generate`` (the path before the lean loop) and of the lean decoder,
    single stream, under ``patches``, runs interleaved; their tokens compared; beside the bounds."""
    model = backbone.model
    start = time.perf_counter()
    routed = packed4bit.enable(model) if backbone.device.type == "cpu" else 0
    prepare_s = time.perf_counter() - start
    paths = {"generate": False, "lean": True}
    tokens = {}
    with PatchEngine.activate(list(patches)):  # warm-up, and the tokens each path gives
        for name, lean in paths.items():
            tokens[name] = exact_tokens(backbone, prompt, new_tokens, lean)[0]
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(repeats):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for name in order:
            seconds[name].append(_timed_generation(backbone, prompt, new_tokens, patches, paths[name]))
    medians = {name: summarize(s).median for name, s in seconds.items()}
    prompt_len = len(backbone.tokenizer(prompt)["input_ids"])
    bounds = decode_bounds(backbone, prompt_len + new_tokens // 2)
    lean_step = medians["lean"] / new_tokens
    agree = (tokens["generate"] == tokens["lean"]).float()
    first_diff = int((agree == 0).nonzero()[0]) if not bool(agree.all()) else None
    speedup = medians["generate"] / medians["lean"]
    result = {
        "new_tokens": new_tokens, "repeats": repeats, "edits": len(patches), "goal": goal,
        "tokens_per_s": {name: summarize(s).inverse(new_tokens).to_dict() for name, s in seconds.items()},
        "speedup": round(speedup, 3), "met": speedup >= goal,
        "same_tokens": bool(agree.all()), "token_agreement": round(float(agree.mean()), 4),
        "first_difference": first_diff,
        "packed_4bit": {"layers": routed, "route": packed4bit.route_kind(model),
                        "head": packed4bit.head_routed(model),
                        "extra_bytes": packed4bit.extra_bytes(model), "prepare_s": round(prepare_s, 3)},
        "bounds": bounds,
        "kernels_share_of_lean_step": round(bounds["kernels_only_s"] / lean_step, 3),
    }
    if not result["met"]:
        log.info("lean decoding %.2fx generate (goal %.1fx): profiling", speedup, goal)
        result["profile"] = top_ops(lambda: _timed_generation(backbone, prompt, new_tokens, patches),
                                    profile_top)
    return result
