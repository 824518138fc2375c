"""A tiny CNN for tests and the sklearn-digits quickstart.

Three conv(3x3) + BN + ReLU blocks with ``width``, ``2 width``, ``4 width`` channels (the last two
with stride 2), then global average pooling to ``4 width`` features. Works on inputs of any size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.classifier import Classifier, make_classifier


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class TinyCNNBackbone(nn.Module):
    """``[B, C, H, W] -> [B, 4 * width]``; ``last_conv`` is the third conv block."""

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"tiny_cnn width must be a positive integer, got {width}.")
        self.feature_dim = 4 * width
        self.block1 = _conv_block(in_channels, width, 1)
        self.block2 = _conv_block(width, 2 * width, 2)
        self.block3 = _conv_block(2 * width, 4 * width, 2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    @property
    def last_conv(self) -> nn.Module:
        """The last conv block (conv + BN + ReLU): its output is the last feature map."""
        return self.block3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.block3(self.block2(self.block1(x))))


def tiny_cnn(
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Classifier:
    """Tiny CNN classifier with ``4 * width`` features."""
    return make_classifier(TinyCNNBackbone(in_channels, width), num_classes, in_channels, mean, std)
