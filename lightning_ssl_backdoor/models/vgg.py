"""CIFAR VGG-16 with BatchNorm (Simonyan & Zisserman, 2015, configuration D, in its CIFAR form).

Thirteen 3x3 conv + BN + ReLU layers (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M),
then global average pooling to 512-d features and one linear head (no large FC layers, as in the
usual CIFAR variant). The max-pools use ``ceil_mode=True``, which is identical to the standard
floor mode for 32x32 inputs and keeps 1x1 maps alive on small inputs (8 or 16 pixels).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightning_ssl_backdoor.models.classifier import Classifier, make_classifier

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG16Backbone(nn.Module):
    """``[B, C, H, W] -> [B, 512]``.

    ``features`` holds every conv layer and the first four max-pools; ``last_conv`` is its last
    ReLU (the last conv feature map); ``pool`` is the fifth max-pool then global average pooling.
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.feature_dim = 512
        layers = []
        c = in_channels
        for v in VGG16_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(
            nn.MaxPool2d(2, 2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def last_conv(self) -> nn.Module:
        """The ReLU after the last conv layer."""
        return self.features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Classifier:
    """CIFAR VGG-16-BN classifier with 512-d features."""
    return make_classifier(VGG16Backbone(in_channels), num_classes, in_channels, mean, std)
