"""`Classifier`: backbone + linear head, with input normalisation inside the model.

Attacks, triggers and defenses all work in [0, 1] pixel space; the model normalises with its own
``mean``/``std`` buffers, so nothing outside it needs to know the dataset statistics.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class Classifier(nn.Module):
    """``head(backbone(normalise(x)))``.

    ``backbone`` maps ``[B, C, H, W]`` to ``[B, feature_dim]`` penultimate features;
    ``head`` is the last ``nn.Linear``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, feature_dim]`` of float [0, 1] images."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
