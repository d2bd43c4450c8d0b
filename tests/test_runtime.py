"""Execution settings: deterministic kernels without loading TorchInductor, and the malloc tuning of compute
stages (speed only, same bytes)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

TUNE = "from metaland.runtime import tune_allocator; print(tune_allocator())"

# A second-order hybrid meta-gradient of Conv4-16 on 28 px tasks in float32 (1-4 MiB activations, the
# sizes glibc's defaults hand back to the kernel), 2 worker threads: the sha256 of its bytes.
META_GRADIENT = """
import hashlib, torch
from metaland.runtime import tune_allocator
print(tune_allocator())
torch.set_num_threads(2)
from metaland.data.tasks import TaskBatch
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.inner import cross_entropy
from metaland.models import build_model, initial_params, make_forward
from metaland.models.convnet import ConvNetParams
from metaland.models.grouped import task_batched_forward
from metaland.schema import NoOptions
module = build_model("convnet", ConvNetParams(filters=16), channels=1, image_size=28, ways=5, seed=0)
params, forward = initial_params(module), make_forward(module)
g = torch.Generator().manual_seed(0)
labels = lambda k: torch.arange(5).repeat_interleave(k).expand(4, -1).contiguous()
support, query = torch.randn(4, 5, 1, 28, 28, generator=g), torch.randn(4, 75, 1, 28, 28, generator=g)
batch = TaskBatch(support, labels(1), query, labels(15))
grouped = task_batched_forward(module)
problem = MetaProblem(forward, cross_entropy(forward), 5, 0.4, 0, engine="hybrid", batched_forward=grouped)
digest = hashlib.sha256()
for _ in range(3):
    grads = ALGORITHMS.get("maml").meta_gradient(problem, params, batch, NoOptions())[0]
    for name in sorted(grads):
        digest.update(grads[name].numpy().tobytes())
print(digest.hexdigest())
"""


def _python(code: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and k != "GLIBC_TUNABLES"}
    clean = {k: v for k, v in clean.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return result.stdout.split()


@glibc_only
def test_the_allocator_is_tuned_unless_the_environment_sets_malloc_itself():
    assert _python(TUNE) == ["True"]
    assert _python(TUNE, GLIBC_TUNABLES="glibc.cpu.x86_shstk=on") == ["True"]  # not malloc's
    assert _python(TUNE, GLIBC_TUNABLES="glibc.malloc.arena_max=4") == ["False"]
    assert _python(TUNE, MALLOC_ARENA_MAX="4") == ["False"]
    assert _python(TUNE, LD_PRELOAD="") == ["True"]  # set but empty: nothing preloaded


@glibc_only
def test_a_tuned_allocator_keeps_the_bytes_of_a_meta_gradient():
    """PyTorch aligns CPU tensors to 64 bytes whatever malloc does, so the tuning changes no result."""
    tuned, default = _python(META_GRADIENT), _python(META_GRADIENT, GLIBC_TUNABLES="glibc.malloc.perturb=0")
    assert tuned[0] == "True" and default[0] == "False"
    assert tuned[1] == default[1]


DETERMINISTIC = """
import sys, torch
{before}
from metaland.runtime import make_deterministic
make_deterministic()
import torch._inductor.config as inductor
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      inductor.deterministic)
"""


@pytest.mark.parametrize(
    ("before", "inductor_flag"),
    [("", "False"), ("import torch._inductor.config", "True")],
    ids=["inductor-not-loaded", "inductor-loaded"],
)
def test_deterministic_kernels_are_on_and_inductor_is_told_only_where_it_is_loaded(before, inductor_flag):
    """PyTorch's deterministic flag (warnings only) is set either way; TorchInductor's own flag, which
    `torch.use_deterministic_algorithms` sets by importing it, is set where a stage loaded it already."""
    code = DETERMINISTIC.format(before=before)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["True", "True", inductor_flag]
