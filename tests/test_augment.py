"""Chen et al.'s training augmentation (seed 001 §3.3): each part on hand-made images, the draws,
and its hook in meta-training (seeded per step, resumable, and absent under ``augment: none``)."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch
from pydantic import ValidationError
from torchvision.transforms.v2 import RandomResizedCrop

from metaland.checkpoints import load_groups
from metaland.config import TrainConfig
from metaland.data.augment import (
    AUGMENTATIONS,
    CROP_RATIO,
    CROP_SCALE,
    Augmentation,
    apply_augmentation,
    augment_batch,
    augment_chen,
    crop_boxes,
    draw_chen,
)
from metaland.data.tasks import TaskBatch
from metaland.meta.finetune import LabelledBatch
from metaland.meta.train import train
from tests.helpers import DATASET_PARAMS, make_run
from tests.test_train import CPU, digests


def plain(images: torch.Tensor, **changes) -> Augmentation:
    """The identity's parameters (whole-image crop, factors 1, no flip), with ``changes``."""
    n, _, h, w = images.shape
    parts = {
        "crops": torch.tensor([[0, 0, h, w]] * n),
        "brightness": torch.ones(n),
        "contrast": torch.ones(n),
        "saturation": torch.ones(n),
        "flip": torch.zeros(n, dtype=torch.bool),
    }
    return Augmentation(**(parts | changes))


def images(n: int = 3, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_identity_parameters_leave_images_unchanged():
    x = images()
    assert torch.equal(apply_augmentation(x, plain(x)), x)


def test_flip_mirrors_left_and_right():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4) / 24  # asymmetric ramps
    out = apply_augmentation(x, plain(x, flip=torch.tensor([True, False])))
    assert torch.equal(out[0, 0, :, 0], x[0, 0, :, 3]) and torch.equal(out[0, 0, :, 3], x[0, 0, :, 0])
    assert torch.equal(out[1], x[1])


def test_brightness_scales_pixels_and_clips():
    x = images()
    out = apply_augmentation(x, plain(x, brightness=torch.tensor([1.3, 0.7, 1.0])))
    torch.testing.assert_close(out[0], (1.3 * x[0]).clamp(max=1.0))
    torch.testing.assert_close(out[1], 0.7 * x[1])
    assert torch.equal(out[2], x[2])


def test_contrast_blends_with_the_mean_grey_level():
    x = images(2)
    factor = torch.tensor([0.6, 1.4])
    out = apply_augmentation(x, plain(x, contrast=factor))
    for i in range(2):
        mean = (0.299 * x[i, 0] + 0.587 * x[i, 1] + 0.114 * x[i, 2]).mean()
        torch.testing.assert_close(out[i], (mean + factor[i] * (x[i] - mean)).clamp(0, 1))


def test_saturation_blends_with_grey_and_is_a_no_op_on_one_channel():
    x = images(1)
    grey = 0.299 * x[0, 0] + 0.587 * x[0, 1] + 0.114 * x[0, 2]
    out = apply_augmentation(x, plain(x, saturation=torch.tensor([0.0])))
    torch.testing.assert_close(out[0], grey.expand(3, -1, -1))
    one = images(1, channels=1)
    assert torch.equal(apply_augmentation(one, plain(one, saturation=torch.tensor([0.0]))), one)


def test_crop_is_resized_back_to_the_image_size():
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4, :4] = 0.25  # constant top-left quadrant
    out = apply_augmentation(x, plain(x, crops=torch.tensor([[0, 0, 4, 4]])))
    torch.testing.assert_close(out, torch.full_like(x, 0.25))


def test_crop_boxes_follow_random_resized_crop():
    ones = torch.ones(1, 10)
    # area fraction 1 and log-ratio in the middle (ratio 1): the whole square image
    assert crop_boxes(ones, 0.5 * ones, torch.zeros(1, 2), 8, 8).tolist() == [[0, 0, 8, 8]]
    # no try fits a 40 x 4 image: the centre crop with the ratio clamped to 3/4 (torchvision's fallback)
    assert crop_boxes(ones, ones, torch.zeros(1, 2), 40, 4).tolist() == [[17, 0, 5, 4]]
    draws = draw_chen(4000, 84, 84, torch.Generator().manual_seed(0))
    top, left, h, w = draws.crops.T.double()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 84).all() and (left + w <= 84).all()
    area = h * w / 84**2
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.43  # 3/4 .. 4/3, up to rounding to pixels
    reference = torch.tensor(
        [RandomResizedCrop.get_params(torch.empty(1, 84, 84), CROP_SCALE, CROP_RATIO) for _ in range(4000)]
    )
    for ours, theirs in ((area, reference[:, 2] * reference[:, 3] / 84**2), (top, reference[:, 0].double())):
        assert abs(ours.mean().item() - theirs.double().mean().item()) < 0.05 * theirs.double().mean().item()
    for factor in (draws.brightness, draws.contrast, draws.saturation):
        assert factor.min() >= 0.6 and factor.max() <= 1.4 and abs(factor.mean().item() - 1) < 0.02
    assert abs(draws.flip.double().mean().item() - 0.5) < 0.03


def test_augmentation_keeps_shape_dtype_and_range_and_refuses_non_images():
    for x in (images(5), images(5, channels=1, size=28)):
        out = augment_chen(x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    with pytest.raises(ValueError, match=r"augmentation takes float images \[N, C, H, W\], got torch.uint8"):
        augment_chen(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.Generator())


def test_batches_are_augmented_per_seed_and_step():
    tasks = TaskBatch(
        images(6).reshape(2, 3, 3, 8, 8), torch.zeros(2, 3), images(4, seed=1).reshape(2, 2, 3, 8, 8), torch.ones(2, 2)
    )
    first, again, later = (augment_batch(tasks, "chen", 7, step) for step in (3, 3, 4))
    for a, b, original in zip(first.tensors(), again.tensors(), tasks.tensors(), strict=True):
        assert a.shape == original.shape and torch.equal(a, b)
    assert not torch.equal(first.support_x, later.support_x) and not torch.equal(first.query_x, tasks.query_x)
    assert torch.equal(first.support_y, tasks.support_y) and torch.equal(first.query_y, tasks.query_y)
    assert augment_batch(tasks, "none", 7, 3) is tasks
    labelled = LabelledBatch(images(4), torch.arange(4))
    out = augment_batch(labelled, "chen", 7, 3)
    assert out.x.shape == labelled.x.shape and not torch.equal(out.x, labelled.x) and torch.equal(out.y, labelled.y)


def test_the_option_names_the_registered_augmentations():
    assert set(get_args(TrainConfig.model_fields["augment"].annotation)) == {"none", *AUGMENTATIONS}
    assert TrainConfig().augment == "none"
    with pytest.raises(ValidationError):
        TrainConfig(augment="autoaugment")


def trained_params(result) -> dict[str, torch.Tensor]:
    return load_groups(result.checkpoints[-1])["params"]


def draws_and_keeps(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Draws Chen et al.'s parameters from ``rng`` as ``chen`` does, and returns the images unchanged."""
    draw_chen(images.shape[0], *images.shape[-2:], rng)
    return images


@pytest.mark.parametrize(
    ("algorithm", "options"), [("maml", None), ("finetune", {"batch_size": 16})], ids=["maml", "finetune"]
)
def test_augmentation_changes_training_only_when_asked(tiny_dataset, tmp_path, monkeypatch, algorithm, options):
    """``augment: none`` trains bit for bit as an augmentation that draws its parameters but leaves the
    images unchanged (both trained here, 4 iterations): the hook and its draws touch nothing else, so
    ``none`` trains as before the option existed. ``chen`` trains on other images but validates on the same."""

    def trained(augment: str, folder: str):
        run = make_run(algorithm, options, iterations=4, checkpoint_every=4, augment=augment)
        return train(run, DATASET_PARAMS, tiny_dataset, tmp_path / folder, device=CPU)

    results = {augment: trained(augment, augment) for augment in ("none", "chen")}
    monkeypatch.setitem(AUGMENTATIONS, "chen", draws_and_keeps)
    unchanged_images = trained("chen", "draws-only")
    none, chen = trained_params(results["none"]), trained_params(results["chen"])
    assert none.keys() == chen.keys() == trained_params(unchanged_images).keys()
    assert all(torch.equal(none[name], value) for name, value in trained_params(unchanged_images).items())
    assert not all(torch.equal(none[name], value) for name, value in chen.items())
    initial = [r.checkpoints[0].sidecar["metrics"] for r in results.values()]
    assert initial[0] == initial[1] and not math.isnan(initial[0]["val/query_accuracy"])


def test_augmented_training_resumes_bit_for_bit(tiny_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(make_run(augment="chen"), DATASET_PARAMS, tiny_dataset, straight, device=CPU)
    train(make_run(iterations=8, augment="chen"), DATASET_PARAMS, tiny_dataset, resumed, device=CPU)
    result = train(make_run(augment="chen"), DATASET_PARAMS, tiny_dataset, resumed, device=CPU)
    assert result.resumed_from == 8
    assert digests(straight) == digests(resumed)
