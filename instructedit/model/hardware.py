"""What this machine computes fast: the one place that decides a float dtype by hardware.

A 4-bit model keeps its unquantized weights and computes in bfloat16 where bfloat16 is fast: on
CUDA, and on CPUs with native bf16 matmuls (AVX512-BF16 or AMX, e.g. AMD Zen 4, Intel Sapphire
Rapids). On other CPUs (AVX2 only, e.g. AMD Zen 3 or most laptops) PyTorch emulates bf16 matmuls
and they run two orders of magnitude slower than float32 (measured: 0.9 against 160 GFLOP/s on a
2-core AMD EPYC Zen 3), so float32 is the default there.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (``/proc/cpuinfo``) of native bfloat16 matrix arithmetic."""


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The flags of the first CPU listed in ``cpuinfo`` (empty where the file is absent)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (not emulated)."""
    flags = cpu_flags()
    if flags:
        return any(flag in flags for flag in BF16_CPU_FLAGS)
    try:  # no /proc/cpuinfo (macOS, Windows): ask bitsandbytes, which probes the CPU itself
        from bitsandbytes import functional
        return bool(functional.has_avx512bf16())
    except Exception:  # noqa: BLE001 - any failure means "not known to be fast"
        return False


def default_float_dtype(quant: str, device: str) -> str:
    """The float dtype a model loads with unless one is asked for: bfloat16 for 4-bit where
    bfloat16 is fast (CUDA, or a CPU with native bf16), float32 otherwise."""
    if quant != "4bit":
        return "float32"
    if device.startswith("cuda") or cpu_has_fast_bf16():
        return "bfloat16"
    log.info("4-bit model in float32: this CPU has no native bfloat16 matmul (flags %s)",
             "/".join(BF16_CPU_FLAGS))
    return "float32"
