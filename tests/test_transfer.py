"""The transfer-learning baseline of seed 001 (§3.1.2, Table 6) against PyTorch's own optimiser:
``torch.optim.SGD`` with momentum, dampening and weight decay training an ``nn.Linear`` head on
features of the frozen body, minibatch by minibatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS
from metaland.meta.transfer import (
    TransferOptions,
    default_linear_head,
    head_finetuning,
    minibatch_schedule,
    sgd_momentum_step,
)
from metaland.models import head_names
from metaland.seeding import generator
from tests.reference import WAYS, make_tasks, tiny_model


def test_sgd_momentum_step_is_torch_optim_sgd():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(7, generator=g, dtype=torch.float64)
    grads = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(5)]
    settings = {"lr": 0.01, "momentum": 0.9, "dampening": 0.9, "weight_decay": 0.001}
    reference = start.clone().requires_grad_(True)
    optimiser = torch.optim.SGD([reference], **settings)
    mine, buffer = start.clone(), None
    for gradient in grads:
        reference.grad = gradient.clone()
        optimiser.step()
        mine, buffer = sgd_momentum_step(mine, gradient, buffer, **settings)
    torch.testing.assert_close(mine, reference.detach(), rtol=0, atol=1e-15)


def test_minibatch_schedule_passes_over_permutations_in_batches_of_four():
    options = TransferOptions(finetune_steps=7, finetune_batch=4)
    schedule = minibatch_schedule(5, options, generator(0, "order"))
    assert [len(b) for b in schedule] == [4, 1, 4, 1, 4, 1, 4]
    for first, second in zip(schedule[0:6:2], schedule[1:6:2], strict=True):
        assert sorted(torch.cat([first, second]).tolist()) == list(range(5))


def test_head_finetuning_matches_torch_sgd_on_frozen_features():
    module, _, params = tiny_model()
    head = head_names(module)
    options = TransferOptions(finetune_steps=6, finetune_batch=4)
    params = default_linear_head(params, head, WAYS, generator(3, "head"))
    batch = make_tasks(2, shots=2)
    adapted = head_finetuning(options, module, head, seed=5)(params, batch.support_x, batch.support_y, 2)

    schedule = minibatch_schedule(batch.support_x.shape[1], options, generator(5, "transfer-finetune-order"))
    body = {k: v for k, v in params.items() if k not in head}
    for task in range(2):
        with torch.no_grad():
            features = torch.func.functional_call(module[:-1], body, (batch.support_x[task],))
        linear = nn.Linear(features.shape[1], WAYS, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(params[head[0]])
            linear.bias.copy_(params[head[1]])
        optimiser = torch.optim.SGD(linear.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
        for index in schedule:
            optimiser.zero_grad()
            nn.functional.cross_entropy(linear(features[index]), batch.support_y[task][index]).backward()
            optimiser.step()
        torch.testing.assert_close(adapted[head[0]][task], linear.weight.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(adapted[head[1]][task], linear.bias.detach(), rtol=0, atol=1e-12)
        for name, value in body.items():  # the features are frozen
            assert torch.equal(adapted[name][task], value)


def test_default_linear_head_draws_within_pytorchs_bound():
    _, _, params = tiny_model()
    module, _, _ = tiny_model()
    head = head_names(module)
    fresh = default_linear_head(params, head, 5, generator(0, "head"))
    bound = 1 / params[head[0]].shape[1] ** 0.5
    assert fresh[head[0]].shape == (5, params[head[0]].shape[1]) and fresh[head[1]].shape == (5,)
    assert fresh[head[0]].abs().max() <= bound and fresh[head[1]].abs().max() <= bound
    assert not torch.equal(fresh[head[1]], torch.zeros(5, dtype=fresh[head[1]].dtype))


def test_transfer_refuses_a_model_that_is_not_a_sequential_ending_in_its_head():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

    with pytest.raises(ConfigError, match=r"nn\.Sequential ending in the linear head"):
        head_finetuning(TransferOptions(), Wrapped(), ("fc.weight", "fc.bias"), 0)


def test_transfer_is_registered_with_pretraining_on_all_train_classes():
    spec = ALGORITHMS.get("transfer")
    assert spec.options_model().batch_size == 128  # Table 6
    assert spec.meta_test_adaptation is head_finetuning
