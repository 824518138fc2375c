"""Shared fixtures: tiny data on CPU, so the whole suite runs in minutes on 2 cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PL_DISABLE_FORK", "1")
# The decode cache of file-based data sets: never the user's ~/.cache during tests, and one folder
# per pytest-xdist worker (a worker inherits the controller's environment, so the owner is noted).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if "SSL_BACKDOOR_CACHE" not in os.environ or os.environ.get("SSL_BACKDOOR_TEST_CACHE_OWNER") not in (None, _WORKER):
    import tempfile

    os.environ["SSL_BACKDOOR_CACHE"] = tempfile.mkdtemp(prefix=f"ssl-backdoor-test-cache-{_WORKER}")
    os.environ["SSL_BACKDOOR_TEST_CACHE_OWNER"] = _WORKER
# Tiny models gain nothing from intra-op threads and lose a lot on a busy 2-core machine.
torch.set_num_threads(1)

from lightning_ssl_backdoor.data import ImageSet, make_split  # noqa: E402
from lightning_ssl_backdoor.utils import quiet_lightning  # noqa: E402

quiet_lightning()


def random_imageset(n: int = 60, c: int = 3, size: int = 8, classes: int = 3, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ImageSet(images, labels, [str(k) for k in range(classes)])


@pytest.fixture
def tiny_sets():
    return random_imageset(60, seed=0), random_imageset(30, seed=1)


@pytest.fixture(scope="session")
def digits_split():
    """Digits at 8x8 (native size), 5 labels per class, the rest unlabeled."""
    from lightning_ssl_backdoor.data.readers import read_digits

    train = read_digits("train", image_size=8)
    test = read_digits("test", image_size=8)
    return make_split(train, test, labels_per_class=5, seed=0)


class AddSquare(torch.nn.Module):
    """A minimal trigger for tests: a white 2x2 square in the bottom-right corner."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., -2:, -2:] = 1.0
        return x


@pytest.fixture
def add_square():
    return AddSquare()
