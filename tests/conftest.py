"""Shared fixtures.

The real Omniglot archives come from a local mirror folder (no internet in CI): the folder named
by ``METALAND_DATA_MIRROR``, else ``../shared/datasets/omniglot`` beside the repository. A test
that needs it fails (it is not skipped) when neither exists, so a broken CI set-up cannot pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def find_omniglot_mirror() -> Path | None:
    candidates = [os.environ.get("METALAND_DATA_MIRROR"), REPO.parent / "shared" / "datasets" / "omniglot"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "images_background_small1.zip").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def omniglot_mirror() -> Path:
    mirror = find_omniglot_mirror()
    if mirror is None:
        pytest.fail(
            "No Omniglot mirror: set METALAND_DATA_MIRROR to a folder holding "
            "images_background_small1.zip and images_background_small2.zip."
        )
    return mirror


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
