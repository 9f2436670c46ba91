"""Architecture adapters: the one place that knows module names and weight orientation.

Each supported family (LLaMA-style decoders, GPT-2) is one small :class:`ArchitectureAdapter`.
Everything else in the package speaks in terms of dotted module names and (out, in) weight
orientation, and asks the adapter for the rest. Adding a family is adding one adapter.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserFacingError


class UnsupportedArchitectureError(UserFacingError, ValueError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Names and conventions of one model family.

    ``layer_template`` is the dotted path of decoder block ``{}``; ``mlp_matrices`` are the
    MLP matrices an editor edits, relative to the block.
    """

    family: str
    model_types: tuple[str, ...]
    blocks_path: str
    mlp_template: str
    mlp_matrices: tuple[str, ...]
    final_norm_path: str
    run_block: Callable[[nn.Module, torch.Tensor, dict], torch.Tensor]
    block_context: Callable[[nn.Module, torch.Tensor], dict]
    embed: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    attn_template: str = ""      # dotted path of block {}'s attention module
    mlp_out_matrix: str = ""     # the MLP's output projection (what ROME edits), in mlp_matrices
    embed_path: str = ""         # the token embedding module

    # ----- names -------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks of ``model``."""
        return model.get_submodule(self.blocks_path)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def edited_module_names(self, model: nn.Module, last_n_layers: int = 3,
                            matrices: tuple[str, ...] | None = None,
                            layers: tuple[int, ...] | None = None) -> list[str]:
        """Dotted names of the MLP matrices of the last ``last_n_layers`` blocks (or of the
        blocks ``layers``, negative indices counting from the top)."""
        n = self.num_layers(model)
        if layers:
            chosen_layers = sorted({i % n if -n <= i < n else i for i in layers})
            if any(not 0 <= i < n for i in chosen_layers):
                raise ValueError(f"layers must be in 0..{n - 1} (or -{n}..-1), got {list(layers)}")
        elif not 1 <= last_n_layers <= n:
            raise ValueError(f"last_n_layers must be in 1..{n}, got {last_n_layers}")
        else:
            chosen_layers = list(range(n - last_n_layers, n))
        chosen = matrices or self.mlp_matrices
        unknown = set(chosen) - set(self.mlp_matrices)
        if unknown:
            raise ValueError(f"unknown MLP matrices {sorted(unknown)} for {self.family}; "
                             f"known: {self.mlp_matrices}")
        return [self.mlp_template.format(layer, m) for layer in chosen_layers for m in chosen]

    def layer_index(self, module_name: str) -> int:
        """The block index that an edited module name belongs to."""
        prefix = self.blocks_path + "."
        if not module_name.startswith(prefix):
            raise ValueError(f"{module_name!r} is not inside {self.blocks_path}")
        return int(module_name[len(prefix):].split(".")[0])

    # ----- orientation ---------------------------------------------------------------------
    @staticmethod
    def in_out_features(module: nn.Module) -> tuple[int, int]:
        """(in, out) of a Linear, Conv1D, Linear8bitLt or Linear4bit module."""
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            return int(module.in_features), int(module.out_features)
        if hasattr(module, "nf"):  # transformers Conv1D: weight is (in, out)
            return int(module.weight.shape[0]), int(module.nf)
        raise UnsupportedArchitectureError(f"cannot read the shape of {type(module).__name__}")

    @staticmethod
    def weight_out_in(module: nn.Module) -> torch.Tensor:
        """The module's weight as a float (out, in) matrix (dequantized if needed)."""
        weight = module.weight
        cls = type(module).__name__
        if cls == "Conv1D":
            return weight.detach().float().t()
        if cls == "Linear4bit":
            import bitsandbytes.functional as bnbf
            return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
        if cls == "Linear8bitLt":
            scb = getattr(weight, "SCB", None)
            if scb is None:
                scb = module.state.SCB
            return (weight.data.float() * scb.float().unsqueeze(1) / 127.0)
        return weight.detach().float()

    @staticmethod
    def add_to_weight_(module: nn.Module, delta_out_in: torch.Tensor) -> None:
        """Add an (out, in) delta to a float module's weight in place (used on copies only)."""
        cls = type(module).__name__
        if cls in ("Linear4bit", "Linear8bitLt"):
            raise TypeError("merge needs a float copy of the model, not a quantized one")
        with torch.no_grad():
            if cls == "Conv1D":
                module.weight.add_(delta_out_in.t().to(module.weight.dtype))
            else:
                module.weight.add_(delta_out_in.to(module.weight.dtype))

    @staticmethod
    def weight_grad_out_in(module: nn.Module) -> torch.Tensor:
        """The autograd gradient of the module's weight, as (out, in)."""
        grad = module.weight.grad
        return grad.t() if type(module).__name__ == "Conv1D" else grad

    # ----- running the top of the network -----------------------------------------------------
    def run_from_layer(self, model: nn.Module, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """Run blocks ``start..`` and the final norm on right-padded hidden states.

        ``hidden`` are the states entering block ``start`` (``output_hidden_states[start]``).
        Causal attention without a mask is exact for the real tokens of right-padded rows.
        """
        hidden = self.run_blocks(model, hidden, start, self.num_layers(model))
        return model.get_submodule(self.final_norm_path)(hidden)

    def run_blocks(self, model: nn.Module, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks ``start..stop-1`` (no final norm) on right-padded hidden states."""
        context = self.block_context(model, hidden)
        for block in list(self.blocks(model))[start:stop]:
            hidden = self.run_block(block, hidden, context)
        return hidden

    def hidden_before_layer(self, model: nn.Module, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """States entering block ``layer`` for right-padded ``input_ids`` (no head, no top blocks)."""
        return self.run_blocks(model, self.embed(model, input_ids), 0, layer)

    # ----- names of the parts of a block (causal tracing, ROME) --------------------------------
    def _check_layer(self, model: nn.Module | None, layer: int) -> None:
        if layer < 0 or (model is not None and layer >= self.num_layers(model)):
            raise ValueError(f"layer {layer} is out of range for this {self.family} model")

    def block_name(self, layer: int, model: nn.Module | None = None) -> str:
        """Dotted name of decoder block ``layer`` (its output is the block's hidden state)."""
        self._check_layer(model, layer)
        return f"{self.blocks_path}.{layer}"

    def mlp_name(self, layer: int, model: nn.Module | None = None) -> str:
        """Dotted name of block ``layer``'s MLP (its output is the MLP's contribution)."""
        self._check_layer(model, layer)
        return self.mlp_template.format(layer, "").rstrip(".")

    def attention_name(self, layer: int, model: nn.Module | None = None) -> str:
        """Dotted name of block ``layer``'s attention (its first output is its contribution)."""
        self._check_layer(model, layer)
        return self.attn_template.format(layer)

    def mlp_out_name(self, layer: int, model: nn.Module | None = None) -> str:
        """Dotted name of block ``layer``'s MLP output projection (LLaMA ``down_proj``, GPT-2
        ``c_proj``): its input is the MLP's key, its output the MLP's value."""
        self._check_layer(model, layer)
        return self.mlp_template.format(layer, self.mlp_out_matrix)

    def token_embedding_name(self) -> str:
        """Dotted name of the token embedding module (before positions are added)."""
        return self.embed_path


def _llama_context(model: nn.Module, hidden: torch.Tensor) -> dict:
    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    rotary = model.get_submodule("model.rotary_emb")
    return {"position_ids": positions, "position_embeddings": rotary(hidden, positions)}


def _llama_block(block: nn.Module, hidden: torch.Tensor, context: dict) -> torch.Tensor:
    out = block(hidden, attention_mask=None, **context)
    return out[0] if isinstance(out, tuple) else out


def _llama_embed(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model.get_submodule("model.embed_tokens")(input_ids)


def _gpt2_embed(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    hidden = model.get_submodule("transformer.wte")(input_ids) + model.get_submodule("transformer.wpe")(positions)
    return model.get_submodule("transformer.drop")(hidden)


def _gpt2_context(model: nn.Module, hidden: torch.Tensor) -> dict:
    return {}


def _gpt2_block(block: nn.Module, hidden: torch.Tensor, context: dict) -> torch.Tensor:
    out = block(hidden, attention_mask=None)
    return out[0] if isinstance(out, tuple) else out


LLAMA = ArchitectureAdapter(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
    blocks_path="model.layers",
    mlp_template="model.layers.{}.mlp.{}",
    mlp_matrices=("gate_proj", "up_proj", "down_proj"),
    final_norm_path="model.norm",
    run_block=_llama_block,
    block_context=_llama_context,
    embed=_llama_embed,
    attn_template="model.layers.{}.self_attn",
    mlp_out_matrix="down_proj",
    embed_path="model.embed_tokens",
)

GPT2 = ArchitectureAdapter(
    family="gpt2",
    model_types=("gpt2",),
    blocks_path="transformer.h",
    mlp_template="transformer.h.{}.mlp.{}",
    mlp_matrices=("c_fc", "c_proj"),
    final_norm_path="transformer.ln_f",
    run_block=_gpt2_block,
    block_context=_gpt2_context,
    embed=_gpt2_embed,
    attn_template="transformer.h.{}.attn",
    mlp_out_matrix="c_proj",
    embed_path="transformer.wte",
)

ADAPTERS: tuple[ArchitectureAdapter, ...] = (LLAMA, GPT2)


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter of ``model``'s family, by its config's ``model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in ADAPTERS for t in a.model_types)
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(known)}")


# ----- temporary, per-context interventions on module outputs (causal tracing, ROME) -----------
OutputEdit = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]
"""``fn(input, output) -> new output or None``: ``input`` is the module's first input (hidden
states), ``output`` its output (the first element when the module returns a tuple)."""

_INTERVENTIONS: contextvars.ContextVar[Mapping[int, OutputEdit] | None] = contextvars.ContextVar(
    "instructedit_interventions", default=None)
_INTERVENTION_HOOKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_INTERVENTION_LOCK = threading.Lock()


def _intervention_hook(module: nn.Module, args: tuple, kwargs: dict, output):
    edits = _INTERVENTIONS.get()
    if not edits:
        return None
    fn = edits.get(id(module))
    if fn is None:
        return None
    x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
    main = output[0] if isinstance(output, tuple) else output
    new = fn(x, main)
    if new is None:
        return None
    return (new, *output[1:]) if isinstance(output, tuple) else new


@contextlib.contextmanager
def intervene(model: nn.Module, edits: Mapping[str, OutputEdit]) -> Iterator[None]:
    """For the ``with`` body and in this context only, pass named modules' outputs through functions.

    ``edits`` maps dotted module names to :data:`OutputEdit` functions, which may read the input
    (a key, a state to record) and return a replacement output (a restored state, an added
    vector) or None. A forward hook is installed once per module and reads a
    :class:`~contextvars.ContextVar` (like the patch hooks of :mod:`instructedit.editing.patches`), so
    other threads running the same model at the same time see no intervention, and leaving the
    block leaves the model exactly as it was. Nested blocks combine (inner names win).
    """
    modules = {name: model.get_submodule(name) for name in edits}
    with _INTERVENTION_LOCK:
        for module in modules.values():
            if module not in _INTERVENTION_HOOKED:
                module.register_forward_hook(_intervention_hook, with_kwargs=True)
                _INTERVENTION_HOOKED.add(module)
    current = dict(_INTERVENTIONS.get() or {})
    current.update({id(modules[name]): fn for name, fn in edits.items()})
    token = _INTERVENTIONS.set(current)
    try:
        yield
    finally:
        _INTERVENTIONS.reset(token)


_HEADS: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_HEADS_LOCK = threading.Lock()
_HALF = (torch.bfloat16, torch.float16)


def _contiguous_half(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dtype in _HALF and not x.is_contiguous():
        return (x.contiguous(), *args[1:])
    return None


def contiguous_head_input(model: nn.Module) -> None:
    """Make the output head read a contiguous input when it computes in 16 bits (installed once
    per model). The prompt pass of a decoder keeps only the last position's hidden state
    (``logits_to_keep=1``), a strided view, and a bf16 matmul over a strided 3-D input falls to a
    slow path that copies the head's weight per row: 2.9 of the 3.6 s of a 55-row prompt pass of
    the embedded 4-bit model; the copy gives bitwise the same logits (``tests/test_cheaper_request.py``). The decoder
    (:mod:`.decoding`) installs it.
    Float32 heads are left alone (there the strided path is fast and a copy would change the last bits)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return
    with _HEADS_LOCK:
        if head not in _HEADS:
            head.register_forward_pre_hook(_contiguous_half)
            _HEADS.add(head)
