"""The synthetic binary tasks of seed 003 §A.1.1: w, x ~ N(0, I), label sign(wᵀx); both sides sampled."""

from __future__ import annotations

import pytest
import torch

from metaland.data import DATASETS, fetch_dataset, load_split
from metaland.data.synthetic import (
    SyntheticBinaryParams,
    TaskPools,
    balanced_sides,
    boundary_task,
    sample_boundary_tasks,
    split_data,
)
from metaland.data.tasks import materialise, sample_dataset_tasks
from metaland.errors import ConfigError
from metaland.seeding import generator

SMALL = SyntheticBinaryParams(dims=9, points_per_task=40, tasks=TaskPools(train=5, val=2, test=3), seed=1)


def test_labels_follow_the_sign_rule_and_are_balanced_in_expectation():
    rng = generator(0, "test")
    positives, total = 0, 0
    for _ in range(200):
        w, x, labels = boundary_task(100, 1000, rng)
        assert torch.equal(labels, (x @ w > 0).long())
        positives, total = positives + int(labels.sum()), total + len(labels)
    # 200,000 labels: the standard error of the fraction is ~0.0011 (and tasks add a little spread)
    assert abs(positives / total - 0.5) < 0.01


def test_reflection_puts_each_half_on_its_side_with_gaussian_statistics():
    rng = generator(0, "reflect")
    w, x, _ = boundary_task(16, 20_000, rng)
    negative, positive = balanced_sides(w, x)
    assert len(negative) == len(positive) == 10_000
    assert bool((negative @ w < 0).all()) and bool((positive @ w > 0).all())
    # conditioning on a side only moves the component along w: the others keep mean 0 and variance 1
    for side in (negative, positive):
        across = side - (side @ w / w.dot(w)).unsqueeze(1) * w
        assert across.mean(0).abs().max() < 0.05
        assert (side.norm(dim=1).square().mean() - 16).abs() < 0.5


def test_splits_hold_both_sides_of_every_task_as_model_inputs(tmp_path):
    out = fetch_dataset(DATASETS.get("synthetic-binary"), SMALL, tmp_path)
    train = load_split(out, "train")
    assert train.images.dtype == torch.float32 and tuple(train.images.shape) == (5 * 40, 1, 3, 3)
    assert train.num_classes == 10 and train.min_instances() == 20
    assert train.class_names[:2] == ("task00000/neg", "task00000/pos")
    assert torch.equal(train.images, split_data(SMALL, "train").images)
    assert not torch.equal(split_data(SMALL, "val").images[:20], train.images[:20])


def test_tasks_pair_the_two_sides_of_one_boundary():
    split = split_data(SMALL, "train")
    tasks = sample_dataset_tasks(
        "synthetic-binary", split, ways=2, shots=4, queries=6, n_tasks=7, generator=generator(0, "t")
    )
    assert torch.equal(tasks.classes[:, 1], tasks.classes[:, 0] + 1) and bool((tasks.classes[:, 0] % 2 == 0).all())
    assert sorted(tasks.classes[:5, 0].tolist()) == [0, 2, 4, 6, 8]  # the pool is used up before tasks repeat
    batch = materialise(split, tasks)
    assert batch.support_x.shape == (7, 8, 1, 3, 3) and batch.support_y.tolist()[0] == [0] * 4 + [1] * 4
    for t in range(7):
        first = tasks.classes[t, 0].item()
        picked = torch.cat([tasks.support[t], tasks.query[t]], dim=1)
        assert all(len(set(row.tolist())) == 10 for row in picked)  # support and query points differ
        assert torch.equal(batch.query_x[t, :6], split.images[split.offsets[first] + tasks.query[t, 0]])


def test_tasks_must_be_binary():
    split = split_data(SMALL, "train")
    with pytest.raises(ConfigError, match=r"binary .* Fix: set ways: 2"):
        sample_boundary_tasks(split, ways=3, shots=1, queries=1, n_tasks=1, generator=generator(0))


@pytest.mark.parametrize(("change", "problem"), [({"dims": 10}, "perfect square"), ({"points_per_task": 7}, "even")])
def test_params_are_checked(change, problem):
    with pytest.raises(ValueError, match=problem):
        SyntheticBinaryParams(**change)
