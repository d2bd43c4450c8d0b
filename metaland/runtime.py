"""Execution settings: device choice, deterministic kernels and the memory allocator."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

from metaland.errors import ConfigError


def select_device(preference: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "params.yaml: device = 'cuda' but PyTorch sees no CUDA device. Fix: set device: auto (or cpu), "
            "or run in the CUDA image with `docker run --gpus all`."
        )
    return torch.device(preference)


CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""cuBLAS workspace setting that makes its GEMMs deterministic (the image sets the same, tested)."""


def make_deterministic() -> None:
    """Same params, same numbers on the same machine (DESIGN.md, Determinism).

    PyTorch's deterministic-algorithms flag is set as ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` sets it, but without importing TorchInductor when nothing has yet: that function
    also sets ``torch._inductor.config.deterministic``, and the import (TorchDynamo with it) took 3 s of
    a core in every training stage (docs/performance.md), for a compiler no stage uses. With TorchInductor
    loaded already (``torch.func`` loads it), the public function runs as it is."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameter numbers (malloc.h)."""
MMAP_THRESHOLD = 32 * 2**20
"""Blocks up to 32 MiB (glibc's largest allowed value) come from malloc's heap, not from fresh
``mmap`` pages; glibc's default starts at 128 KiB and adapts to what was freed."""
TRIM_THRESHOLD = 2**30
"""Freed memory at the top of the heap goes back to the kernel only beyond 1 GiB."""


def tune_allocator() -> bool:
    """Keep freed tensor memory in glibc malloc's heap instead of handing it back to the kernel.

    The hybrid engine's grouped networks allocate and free tensors of 1-30 MiB thousands of times
    per meta-iteration or surface. With glibc's defaults many of them are fresh pages that fault
    in on first touch: 70k minor page faults per meta-iteration, and a 15 MiB convolution output
    of a surface took 32 ms instead of 9 ms (docs/performance.md, "Surfaces in worker threads").
    Speed only: PyTorch aligns every CPU tensor to 64 bytes either way, so results keep their
    bytes (tested); a process keeps up to its peak memory until it exits.

    Returns False and changes nothing off glibc, or when the environment sets malloc itself
    (``GLIBC_TUNABLES`` with ``glibc.malloc``, a ``MALLOC_*`` variable, or an ``LD_PRELOAD``ed
    allocator), which is also how to run without it.
    """
    if platform.libc_ver()[0] != "glibc" or os.environ.get("LD_PRELOAD"):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
