"""Model registry and the functional view of a model.

A model is an ``nn.Module`` used only as a *function* of a parameter dict:
``forward(params, x) = torch.func.functional_call(module, params, (x,))``. Meta-learning code
never mutates module weights; it passes ``params`` (``{name: tensor}``) around, which is what
lets inner loops be pure, vectorised with ``vmap`` and differentiated through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call

from metaland.registry import Registry
from metaland.schema import Params
from metaland.seeding import derive_seed

if TYPE_CHECKING:
    from metaland.config import Run

ParamDict = dict[str, torch.Tensor]
Forward = Callable[[ParamDict, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """``build(options, channels, image_size, ways)`` returns a freshly initialised module;
    ``label(options)`` is the name results and figures give it (default: the model's name)."""

    name: str
    description: str
    config_model: type[Params]
    build: Callable[[Params, int, int, int], nn.Module]
    label: Callable[[Params], str] | None = None

    def label_of(self, options: Params) -> str:
        return self.name if self.label is None else self.label(options)


MODELS: Registry[ModelSpec] = Registry("model")


def build_model(name: str, options: Params, *, channels: int, image_size: int, ways: int, seed: int) -> nn.Module:
    """Build a model whose initial weights depend only on ``seed`` (not on global RNG state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return MODELS.get(name).build(options, channels, image_size, ways)


def build_for_run(
    run: Run, images: torch.Tensor, device: torch.device | str = "cpu", *, classes: int | None = None
) -> nn.Module:
    """The model of ``run`` for inputs shaped like ``images`` [N, C, H, W], on ``device``.

    Training and probing build it the same way, so a checkpoint's parameter names always match.
    The head has ``classes`` logits (default ``run.ways``; the finetune baseline pre-trains with
    one per meta-train class).
    """
    module = build_model(
        run.model_name,
        run.model,
        channels=images.shape[1],
        image_size=images.shape[-1],
        ways=classes or run.ways,
        seed=run.seed,
    )
    return module.to(device)


def initial_params(module: nn.Module) -> ParamDict:
    """The module's parameters as a detached dict (the meta-parameters θ)."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def make_forward(module: nn.Module) -> Forward:
    """``forward(params, x)``: evaluate ``module`` with the given parameters (torch.func); entries of
    ``params`` that are not the module's (a learned inner update's, ``metaland.meta.metaopt``) are ignored."""
    if any(buffer is not None for buffer in module.buffers()):
        raise ValueError("functional models must not carry buffers (use BatchNorm with batch statistics)")

    names = [name for name, _ in module.named_parameters()]

    def forward(params: ParamDict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, {name: params[name] for name in names}, (x,))

    return forward


def flatten(params: ParamDict) -> torch.Tensor:
    """One parameter vector [d] from a dict (the order of the dict)."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def flatten_batched(params: ParamDict) -> torch.Tensor:
    """[B, d] from a dict of [B, ...] tensors (one row per task)."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in params.values()], dim=1)


def unflatten_batched(rows: torch.Tensor, like: ParamDict) -> ParamDict:
    """The inverse of :func:`flatten_batched`: rows [B, d] -> {name: [B, *like[name].shape]}."""
    sizes = [p.numel() for p in like.values()]
    pieces = rows.split(sizes, dim=1)
    return {name: piece.reshape(rows.shape[0], *p.shape) for (name, p), piece in zip(like.items(), pieces, strict=True)}


def head_names(module: nn.Module) -> tuple[str, str]:
    """Names of the weight and bias of the classifier head: the module's last ``nn.Linear``.

    Every registered model ends in a linear head with one logit per class (seed 000 §2.7.1)."""
    linears = [name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no linear head")
    return f"{linears[-1]}.weight", f"{linears[-1]}.bias"


# Registrations (one module per model family).
from metaland.models import cnn as _cnn  # noqa: E402,F401
from metaland.models import convnet as _convnet  # noqa: E402,F401
from metaland.models import linear as _linear  # noqa: E402,F401
from metaland.models import resnet as _resnet  # noqa: E402,F401
from metaland.models import resnet12 as _resnet12  # noqa: E402,F401
