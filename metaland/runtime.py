"""Execution settings: device choice and deterministic kernels."""

from __future__ import annotations

import os

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
    """Same params, same numbers on the same machine (DESIGN.md, Determinism)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
