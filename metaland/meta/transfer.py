"""The transfer-learning baseline of seed 001 (§3.1.2, eqs. 1-2, Table 6; Chen et al. 2019's Baseline).

Pre-training (eq. 1), θ* = argmin_θ L(θ, D^train): supervised classification over all meta-train
classes, the same as the finetune baseline's pre-training (``metaland.meta.finetune``: seeded
batches, one logit per meta-train class, mean cross-entropy), with Table 6's batch of 128 images
and the run's Adam (Table 6: lr 0.001). The best checkpoint by validation accuracy is the one
probed (§4.2.1: validated every 5 epochs; ``train.checkpoint_every`` and ``extract.best``).

Meta-test (eq. 2), argmin_{θ_head} L(θ_head, D_i^support): the feature layers are **frozen** and a
new m-way linear head is trained on the support set. The head starts from PyTorch's default
``nn.Linear`` initialisation (Chen et al.'s code creates one per task; here one draw per checkpoint,
seeded by (run seed, checkpoint step), shared by every task, as the finetune baseline does). Table 6:
SGD with lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001, on minibatches of 4 support
images, for 10 updates. Each pass over the support set visits it in a fresh random order in
minibatches of 4 (the last one smaller: 5-way 1-shot gives passes of 4 + 1 images, as in Chen et
al.'s loop); the orders are seeded by the run seed and shared by all tasks. Features are computed
once per task with the frozen backbone (Chen et al. extract them once), from the whole support set
as one batch: BatchNorm uses that batch's statistics, as everywhere in this project; query features
likewise from the whole query set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad

from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS, AlgorithmSpec
from metaland.meta.evaluate import TaskAdaptation
from metaland.meta.finetune import all_train_classes, pretraining_gradient, supervised_batch
from metaland.models import ParamDict
from metaland.schema import Params
from metaland.seeding import generator
from metaland.vectorise import map_leading


class TransferOptions(Params):
    batch_size: int = Field(128, ge=1, description="Images per pre-training iteration (seed 001 Table 6: 128).")
    finetune_steps: int = Field(
        10,
        ge=1,
        description="SGD updates of the new head at meta-test (seed 001 Table 6: 10; Chen et al.'s code runs "
        "100 passes = 200 updates for 5-way 1-shot).",
    )
    finetune_batch: int = Field(4, ge=1, description="Support images per fine-tuning update (Table 6: 4).")
    finetune_lr: float = Field(0.01, gt=0, description="Fine-tuning learning rate (Table 6: 0.01).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of fine-tuning (Table 6: 0.9).")
    dampening: float = Field(0.9, ge=0, le=1, description="SGD dampening of fine-tuning (Table 6: 0.9).")
    weight_decay: float = Field(0.001, ge=0, description="SGD weight decay of fine-tuning (Table 6: 0.001).")


def sgd_momentum_step(
    param: torch.Tensor,
    gradient: torch.Tensor,
    buffer: torch.Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``torch.optim.SGD`` (no Nesterov): g ← ∇ + λ p; b ← g at the first step, else
    μ b + (1 − τ) g; p ← p − η b. Returns (p, b); ``buffer`` is None before the first step."""
    g = gradient + weight_decay * param
    buffer = g if buffer is None else momentum * buffer + (1 - dampening) * g
    return param - lr * buffer, buffer


def minibatch_schedule(support: int, options: TransferOptions, rng: torch.Generator) -> list[torch.Tensor]:
    """Support indices of each fine-tuning update: passes over a fresh permutation in batches."""
    per_pass = math.ceil(support / options.finetune_batch)
    batches: list[torch.Tensor] = []
    while len(batches) < options.finetune_steps:
        order = torch.randperm(support, generator=rng)
        batches += list(order.split(options.finetune_batch))[:per_pass]
    return batches[: options.finetune_steps]


def default_linear_head(params: ParamDict, head: tuple[str, str], ways: int, rng: torch.Generator) -> ParamDict:
    """θ* with its head replaced by an m-way layer with ``nn.Linear``'s default initialisation:
    weight and bias ~ U(−1/√d, 1/√d) for d input features."""
    weight_name, bias_name = head
    like = params[weight_name]
    bound = 1 / math.sqrt(like.shape[1])
    weight = torch.empty(ways, like.shape[1], dtype=like.dtype).uniform_(-bound, bound, generator=rng)
    bias = torch.empty(ways, dtype=like.dtype).uniform_(-bound, bound, generator=rng)
    return {**params, weight_name: weight.to(like.device), bias_name: bias.to(like.device)}


def feature_extractor(module: nn.Module, head: tuple[str, str]):
    """``features(params, x)``: the module without its head (an ``nn.Sequential`` ending in it)."""
    if not isinstance(module, nn.Sequential) or not isinstance(module[-1], nn.Linear):
        raise ConfigError(
            f"the transfer baseline fine-tunes a new head on frozen features, so its model must be an "
            f"nn.Sequential ending in the linear head; {type(module).__name__} is not. Fix: use a registered "
            "backbone (convnet, resnet)."
        )
    body = module[:-1]
    names = [name for name, _ in body.named_parameters()]

    def features(params: ParamDict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(body, {name: params[name] for name in names}, (x,))

    return features


def head_finetuning(options: TransferOptions, module: nn.Module, head: tuple[str, str], seed: int) -> TaskAdaptation:
    """Seed 001 eq. 2 with Table 6's optimiser: the head of θ trained on frozen support features."""
    features = feature_extractor(module, head)
    weight_name, bias_name = head

    def adapt_all(params: ParamDict, support_x: torch.Tensor, support_y: torch.Tensor, chunk: int) -> ParamDict:
        schedule = minibatch_schedule(support_x.shape[1], options, generator(seed, "transfer-finetune-order"))

        def head_loss(head_params: ParamDict, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(f @ head_params[weight_name].T + head_params[bias_name], y)

        def one_task(x: torch.Tensor, y: torch.Tensor) -> ParamDict:
            f = features(params, x)
            current = {weight_name: params[weight_name], bias_name: params[bias_name]}
            buffers: dict[str, torch.Tensor | None] = dict.fromkeys(current)
            for index in schedule:
                grads = grad(head_loss)(current, f[index], y[index])
                for name in current:
                    current[name], buffers[name] = sgd_momentum_step(
                        current[name],
                        grads[name],
                        buffers[name],
                        lr=options.finetune_lr,
                        momentum=options.momentum,
                        dampening=options.dampening,
                        weight_decay=options.weight_decay,
                    )
            return {**params, **current}

        with torch.no_grad():
            return map_leading(one_task, chunk=chunk)(support_x, support_y)

    return adapt_all


ALGORITHMS.register(
    "transfer",
    AlgorithmSpec(
        "transfer",
        "Transfer-learning baseline: supervised pre-training, then a new head fine-tuned on frozen features with "
        "SGD (seed 001 §3.1.2, Table 6)",
        TransferOptions,
        pretraining_gradient,
        training_batch=supervised_batch,
        output_classes=all_train_classes,
        meta_test_params=default_linear_head,
        meta_test_adaptation=head_finetuning,
    ),
)
