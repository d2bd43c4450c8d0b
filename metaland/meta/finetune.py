"""The finetune baseline (seed 000 §2.3.2, §2.7.3).

Pre-training is plain supervised classification over **all meta-train classes**: the head has
one logit per class of the train split, each iteration draws ``batch_size`` images of that split
(without replacement within the batch, seeded by (run seed, iteration)), and Adam with the
meta-update's hyper-parameters (β = 0.001) follows the mean cross-entropy gradient. An "epoch" of
the thesis is ``train.checkpoint_every`` iterations (§2.7.3: 25 iterations of 64 images for the
model evaluated on 1-shot tasks, 12 of 128 for 5-shot), so there is one checkpoint per epoch.

At meta-test (validation during training and every probe), the head is replaced by an m-way
linear layer with Xavier (Glorot & Bengio 2010) uniform weights and zero biases (the bias init is
not stated; zero is the usual choice), then **all** parameters are adapted with the same inner
loop as MAML (same α and T). One head is drawn per checkpoint, from a generator seeded by (run
seed, checkpoint step), and shared by every task, so the displacements θ̃_i − θ^s of different
tasks start from the same θ^s and are comparable (spec §2, "finetune directions").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import grad_and_value

from metaland.data.layout import SplitData
from metaland.data.tasks import model_inputs
from metaland.meta import ALGORITHMS, AlgorithmSpec, MetaProblem
from metaland.meta.inner import accuracy
from metaland.models import ParamDict
from metaland.schema import Params
from metaland.seeding import generator


class FinetuneOptions(Params):
    batch_size: int = Field(
        64,
        ge=1,
        description="Images per pre-training iteration (seed 000 §2.7.3, MiniImagenet: 64 for the model "
        "evaluated on 1-shot, 128 for 5-shot; iterations per epoch = train.checkpoint_every: 25 / 12).",
    )


@dataclass(frozen=True)
class LabelledBatch:
    """Images x [B, C, H, W] in [0, 1] and their class indices y [B] within the split."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device | str) -> LabelledBatch:
        return LabelledBatch(self.x.to(device), self.y.to(device))

    def map_images(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> LabelledBatch:
        """The batch with ``fn`` applied to its images (training-time augmentation, ``metaland.data.augment``)."""
        return LabelledBatch(fn(self.x), self.y)


def supervised_batch(run, split: SplitData, step: int, options: FinetuneOptions) -> LabelledBatch:
    """``batch_size`` distinct images of the split for iteration ``step``, labelled by class."""
    if options.batch_size > len(split.images):
        raise ValueError(f"batch of {options.batch_size} images from a split of {len(split.images)}")
    index = torch.randperm(len(split.images), generator=generator(run.seed, "pretrain-images", step))
    index = index[: options.batch_size]
    labels = torch.searchsorted(split.offsets, index, right=True) - 1
    return LabelledBatch(model_inputs(split.images[index]), labels)


def all_train_classes(run, split: SplitData) -> int:
    return split.num_classes


def pretraining_gradient(
    problem: MetaProblem, params: ParamDict, batch: LabelledBatch, options: FinetuneOptions
) -> tuple[ParamDict, dict[str, float]]:
    """∇_θ of the mean cross-entropy over the batch, and its loss and accuracy."""

    def batch_loss(p: ParamDict):
        logits = problem.forward(p, batch.x)
        loss = F.cross_entropy(logits, batch.y)
        return loss, accuracy(logits, batch.y).detach()

    grads, (loss, batch_accuracy) = grad_and_value(batch_loss, has_aux=True)(params)
    return grads, {"batch_loss": loss.item(), "batch_accuracy": batch_accuracy.item()}


def xavier_head(params: ParamDict, head: tuple[str, str], ways: int, rng: torch.Generator) -> ParamDict:
    """θ^s with its head replaced by an m-way Xavier-uniform layer (zero biases) drawn from ``rng``."""
    weight_name, bias_name = head
    like = params[weight_name]
    weight = torch.nn.init.xavier_uniform_(torch.empty(ways, like.shape[1], dtype=like.dtype), generator=rng)
    return {
        **params,
        weight_name: weight.to(like.device),
        bias_name: torch.zeros(ways, dtype=like.dtype, device=like.device),
    }


ALGORITHMS.register(
    "finetune",
    AlgorithmSpec(
        "finetune",
        "Finetune baseline: supervised pre-training on all meta-train classes, Xavier m-way head at "
        "meta-test (seed 000 §2.3.2)",
        FinetuneOptions,
        pretraining_gradient,
        training_batch=supervised_batch,
        output_classes=all_train_classes,
        meta_test_params=xavier_head,
    ),
)
