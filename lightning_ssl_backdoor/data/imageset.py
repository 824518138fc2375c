"""`ImageSet`: the one in-memory container every stage passes around.

Pixels are stored as uint8 ``N x C x H x W``; labels are int64 with ``-1`` for "unknown". For
unlabeled sets the ground-truth labels are kept in ``true_labels`` for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from lightning_ssl_backdoor.errors import DataFormatError


def _as_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.to(dtype)


@dataclass
class ImageSet:
    """Images (uint8 ``[N, C, H, W]``), labels (int64 ``[N]``, -1 = unknown) and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)
    true_labels: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray) and self.images.dtype != np.uint8:
            raise DataFormatError(
                f"ImageSet images must be uint8, got {self.images.dtype}; quantise float pixels "
                "with `quantize()` first."
            )
        if isinstance(self.images, torch.Tensor) and self.images.dtype != torch.uint8:
            raise DataFormatError(
                f"ImageSet images must be uint8, got {self.images.dtype}; quantise float pixels "
                "with `quantize()` first."
            )
        self.images = _as_tensor(self.images, torch.uint8)
        self.labels = _as_tensor(self.labels, torch.int64).reshape(-1)
        if self.true_labels is not None:
            self.true_labels = _as_tensor(self.true_labels, torch.int64).reshape(-1)
        self.classes = [str(c) for c in self.classes]
        if self.images.ndim != 4:
            raise DataFormatError(
                f"ImageSet images must have shape N x C x H x W, got {tuple(self.images.shape)}."
            )
        n = self.images.shape[0]
        if self.labels.shape[0] != n:
            raise DataFormatError(f"ImageSet has {n} images but {self.labels.shape[0]} labels.")
        if self.true_labels is not None and self.true_labels.shape[0] != n:
            raise DataFormatError(
                f"ImageSet has {n} images but {self.true_labels.shape[0]} true labels."
            )
        if self.classes and n and int(self.labels.max()) >= len(self.classes):
            raise DataFormatError(
                f"label {int(self.labels.max())} is out of range for {len(self.classes)} classes."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def targets(self) -> torch.Tensor:
        """Ground-truth labels: ``true_labels`` where kept, else ``labels``."""
        return self.true_labels if self.true_labels is not None else self.labels

    def subset(self, index: Sequence[int] | torch.Tensor | np.ndarray) -> "ImageSet":
        idx = _as_tensor(index, torch.int64).reshape(-1)
        return ImageSet(
            images=self.images[idx].clone(),
            labels=self.labels[idx].clone(),
            classes=list(self.classes),
            true_labels=None if self.true_labels is None else self.true_labels[idx].clone(),
        )

    def unlabeled(self) -> "ImageSet":
        """The same images with labels hidden (-1) and the ground truth kept in ``true_labels``."""
        return ImageSet(
            images=self.images,
            labels=torch.full_like(self.labels, -1),
            classes=list(self.classes),
            true_labels=self.targets.clone(),
        )

    def float(self) -> torch.Tensor:
        """Pixels as float32 in [0, 1]."""
        return self.images.float().div_(255.0)

    @staticmethod
    def concat(sets: Sequence["ImageSet"]) -> "ImageSet":
        if not sets:
            raise DataFormatError("cannot concatenate an empty list of ImageSets.")
        keep_true = any(s.true_labels is not None for s in sets)
        return ImageSet(
            images=torch.cat([s.images for s in sets]),
            labels=torch.cat([s.labels for s in sets]),
            classes=list(sets[0].classes),
            true_labels=torch.cat([s.targets for s in sets]) if keep_true else None,
        )


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] -> uint8, clipped then rounded (the only place pixels are quantised)."""
    return x.detach().clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
