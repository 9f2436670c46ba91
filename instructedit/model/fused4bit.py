"""The fused 4-bit CPU matmul for AVX2 machines (``kernels/fused4bit_avx2.c``), built on first use.

bitsandbytes' default CPU route for a 4-bit layer dequantizes the whole matrix to the compute
dtype on every call and then multiplies: for one decoding step of the 135M model that is 425 MB
written and read again to multiply 53 MB of 4-bit weights by one token. Its fast packed kernel
needs AVX512-bf16 (:mod:`.packed4bit`), which most laptops and many servers lack. This kernel reads
each half-byte weight once, decodes it in registers and multiplies in float32: the values it
multiplies are exactly the default route's dequantized weights (``code[q] * absmax``), only the
order of the additions differs (results within float32 rounding of the default route's).

The C source is compiled with the system's C compiler (``cc``, or ``$CC``) into
``$INSTRUCTEDIT_KERNEL_CACHE`` (default ``~/.cache/instructedit/kernels``), once per source
version, and loaded with :mod:`ctypes`. Where there is no compiler, no AVX2/FMA, or the build
fails, :func:`load` returns ``None`` and callers keep bitsandbytes' route. ``INSTRUCTEDIT_FUSED_4BIT=0``
turns it off.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .hardware import cpu_flags

log = logging.getLogger(__name__)

__all__ = ["KernelBuild", "Kernels", "WeightArgs", "cpu_supports", "load", "build_kernels", "run", "matmul",
           "MAX_ROWS"]

SOURCE = Path(__file__).with_name("kernels") / "fused4bit_avx2.c"
SYMBOL = "fused4bit_matmul"
F32_SYMBOL = "rows_matmul_f32"
# Above this many input rows bitsandbytes' route (one dequantization, then a blocked sgemm) is
# faster: the kernel's dot products are not register-blocked over the weights' rows. Measured on a
# 2-core Zen 3 (a SmolLM2-135M block's seven 4-bit matmuls): 3.4 ms against 5.1 ms at 24 rows,
# 6.1 against 6.6 at 48, 8.0 against 7.2 at 64.
MAX_ROWS = 48


@dataclass(frozen=True)
class KernelBuild:
    """How the kernel is compiled (the cache key includes all of it)."""

    flags: tuple[str, ...] = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")

    def compiler(self) -> str | None:
        """The C compiler to use: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
        for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
            if name and shutil.which(name):
                return name
        return None

    def cache_dir(self) -> Path:
        env = os.environ.get("INSTRUCTEDIT_KERNEL_CACHE")
        if env:
            return Path(env)
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "instructedit" / "kernels"

    def library_path(self, compiler: str) -> Path:
        digest = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *self.flags)).encode())
        return self.cache_dir() / f"fused4bit_avx2-{digest.hexdigest()[:16]}.so"


def cpu_supports() -> bool:
    """Whether this CPU runs AVX2 and FMA code (its flags; without them: torch's capability)."""
    flags = cpu_flags()
    if not flags:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return "avx2" in flags and "fma" in flags


def _compile(build: KernelBuild, compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile beside the target and rename: a concurrent process never loads a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *build.flags, "-o", tmp, str(SOURCE)], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass(frozen=True)
class Kernels:
    """The built library's two functions (ctypes, argument types set)."""

    fused4bit: ctypes._CFuncPtr
    rows_f32: ctypes._CFuncPtr


_LOCK = threading.Lock()
_LOADED: dict[KernelBuild, Kernels | None] = {}  # the built kernels, once per process


def load(build: KernelBuild = KernelBuild()) -> Kernels | None:
    """The kernels, building them if needed; ``None`` where they cannot run here."""
    with _LOCK:
        if build in _LOADED:
            return _LOADED[build]
        _LOADED[build] = build_kernels(build)
        return _LOADED[build]


def build_kernels(build: KernelBuild = KernelBuild()) -> Kernels | None:
    """Build (or find in the cache) and load the kernels now, without the per-process memo of
    :func:`load`; ``None`` where they cannot run here (the reason is logged)."""
    if os.environ.get("INSTRUCTEDIT_FUSED_4BIT", "1") == "0":
        log.info("fused 4-bit kernel turned off (INSTRUCTEDIT_FUSED_4BIT=0)")
        return None
    if not cpu_supports():
        log.info("fused 4-bit kernel: this CPU has no AVX2/FMA")
        return None
    compiler = build.compiler()
    if compiler is None:
        log.info("fused 4-bit kernel: no C compiler (cc, gcc, clang or $CC) on the PATH")
        return None
    path = build.library_path(compiler)
    try:
        if not path.exists():
            log.info("building the fused 4-bit kernel with %s into %s", compiler, path)
            _compile(build, compiler, path)
        library = ctypes.CDLL(str(path))
        fused, rows = library[SYMBOL], library[F32_SYMBOL]
    except (OSError, AttributeError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or err
        log.warning("fused 4-bit kernel unavailable (%s); 4-bit layers keep bitsandbytes' route", detail)
        return None
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    fused.argtypes = [i64, i64, i64, ptr, i64, ptr, ptr, ptr, i64, ptr, i64, c_int]
    rows.argtypes = [i64, i64, i64, ptr, i64, ptr, i64, ptr, i64, c_int]
    fused.restype = rows.restype = c_int
    return Kernels(fused, rows)


@dataclass(frozen=True)
class WeightArgs:
    """One weight's arguments to a kernel, checked once for many calls. It holds the tensors, so
    the addresses it passes stay valid while it lives."""

    tensors: tuple[torch.Tensor, ...]
    n: int
    k: int
    blocksize: int  # 0: a float32 weight (rows_matmul_f32)
    pointers: tuple[int, ...]

    @classmethod
    def four_bit(cls, weight: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int,
                 blocksize: int) -> WeightArgs:
        """A bitsandbytes CPU 4-bit weight (N, K): packed uint8 codes, float32 absmax and code."""
        if k % 32 or blocksize % 32:
            raise ValueError(f"fused 4-bit matmul needs K and the blocksize divisible by 32 (K={k}, {blocksize})")
        if weight.dtype != torch.uint8 or weight.numel() * 2 != n * k:
            raise ValueError(f"a 4-bit weight of {n} x {k} has {n * k // 2} bytes, got {weight.numel()} {weight.dtype}")
        if absmax.dtype != torch.float32 or code.dtype != torch.float32 or code.numel() != 16:
            raise ValueError("fused 4-bit matmul needs float32 absmax and a 16-value float32 code")
        if absmax.numel() * blocksize < n * k:
            raise ValueError(f"{absmax.numel()} absmax values do not cover {n} x {k} weights in blocks of {blocksize}")
        tensors = tuple(t.contiguous() for t in (weight, absmax, code))
        return cls(tensors, n, k, blocksize, tuple(t.data_ptr() for t in tensors))

    @classmethod
    def float32(cls, weight: torch.Tensor) -> WeightArgs:
        """A float32 weight (N, K) with contiguous rows."""
        n, k = weight.shape
        if weight.dtype != torch.float32 or weight.stride(1) != 1 or k % 16:
            raise ValueError("the float32 kernel needs a float32 weight with contiguous rows and K divisible by 16")
        return cls((weight,), n, k, 0, (weight.data_ptr(), weight.stride(0)))


def run(kernels: Kernels, x: torch.Tensor, args: WeightArgs, threads: int | None = None) -> torch.Tensor:
    """``x @ W^T`` for a 2-D float32 ``x`` (M, K) whose rows are contiguous (the caller's
    promise; :func:`matmul` checks it): (M, N) float32."""
    out = torch.empty((x.shape[0], args.n), dtype=torch.float32)
    threads = threads or torch.get_num_threads()
    if args.blocksize:
        status = kernels.fused4bit(x.shape[0], args.n, args.k, x.data_ptr(), x.stride(0), *args.pointers,
                                   args.blocksize, out.data_ptr(), args.n, threads)
    else:
        status = kernels.rows_f32(x.shape[0], args.n, args.k, x.data_ptr(), x.stride(0), *args.pointers,
                                  out.data_ptr(), args.n, threads)
    if status != 0:
        raise MemoryError("fused matmul could not allocate its work space")
    return out


def matmul(kernels: Kernels, x: torch.Tensor, args: WeightArgs, threads: int | None = None) -> torch.Tensor:
    """:func:`run` with ``x`` checked: float32, 2-D, K columns (made row-contiguous if needed)."""
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != args.k:
        raise ValueError(f"fused matmul needs a float32 (M, {args.k}) input, got {x.dtype} {tuple(x.shape)}")
    return run(kernels, x if x.stride(1) == 1 else x.contiguous(), args, threads)
