"""CIFAR ResNet-18 (He et al., "Deep Residual Learning", 2016, in its common CIFAR form).

3x3 stem with 64 channels, no max-pool, four stages of two basic blocks (64, 128, 256, 512
channels; strides 1, 2, 2, 2), global average pooling to 512-d features: ~11.17M parameters with
10 classes. This is the backbone DBD (Huang et al., ICLR 2022) uses for SimCLR.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightning_ssl_backdoor.models.classifier import Classifier, make_classifier


class _BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18Backbone(nn.Module):
    """``[B, C, H, W] -> [B, 512]``; any input of at least 8x8 pixels works (adaptive pooling)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.feature_dim = 512
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        layers = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(_BasicBlock(in_planes, planes, stride),
                                        _BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def last_conv(self) -> nn.Module:
        """``layer4``: its output is the last feature map ``[B, 512, h, w]``."""
        return self.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.pool(x)


def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Classifier:
    """CIFAR ResNet-18 classifier with 512-d features."""
    return make_classifier(ResNet18Backbone(in_channels), num_classes, in_channels, mean, std)
