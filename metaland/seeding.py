"""Seeded generators derived from (run seed, purpose).

No code draws from a global random state: every draw takes a ``torch.Generator`` made here, so a
purpose (the tasks of meta-iteration 17, the init of run 3, the Lanczos start vector of
probe task 5) always gets the same numbers whatever ran before it. This is what makes training
resumable bit for bit: iteration ``s`` re-derives its task batch from ``(seed, "train-tasks", s)``.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and the purpose labels."""
    text = "/".join([str(seed), *map(str, purpose)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def generator(seed: int, *purpose: object) -> torch.Generator:
    """A CPU generator seeded for one purpose."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *purpose))
    return g
