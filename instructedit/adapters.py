"""Architecture adapters: the one place that knows module names and weight orientation.

Each supported family (LLaMA-style decoders, GPT-2) is one small :class:`ArchitectureAdapter`.
Everything else in the package speaks in terms of dotted module names and (out, in) weight
orientation, and asks the adapter for the rest. Adding a family is adding one adapter.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedArchitectureError(ValueError):
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

    # ----- names -------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks of ``model``."""
        return model.get_submodule(self.blocks_path)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def edited_module_names(self, model: nn.Module, last_n_layers: int = 3,
                            matrices: tuple[str, ...] | None = None) -> list[str]:
        """Dotted names of the MLP matrices of the last ``last_n_layers`` blocks."""
        n = self.num_layers(model)
        if not 1 <= last_n_layers <= n:
            raise ValueError(f"last_n_layers must be in 1..{n}, got {last_n_layers}")
        chosen = matrices or self.mlp_matrices
        unknown = set(chosen) - set(self.mlp_matrices)
        if unknown:
            raise ValueError(f"unknown MLP matrices {sorted(unknown)} for {self.family}; "
                             f"known: {self.mlp_matrices}")
        return [self.mlp_template.format(layer, m)
                for layer in range(n - last_n_layers, n) for m in chosen]

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
