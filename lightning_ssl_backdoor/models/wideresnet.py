"""Wide ResNet as used by FixMatch (Sohn et al., 2020) and most SSL benchmarks.

Zagoruyko & Komodakis, "Wide Residual Networks" (2016): depth ``6n + 4``, three groups of ``n``
pre-activation basic blocks with ``16k``, ``32k``, ``64k`` channels (strides 1, 2, 2) after a 3x3
stem with 16 channels. The SSL variant (FixMatch/MixMatch reference code) uses BatchNorm momentum
0.001 (PyTorch convention, i.e. a running average with decay 0.999), LeakyReLU(0.1), Kaiming-normal
conv initialisation (fan_out) and a final BN + LeakyReLU before global average pooling.

Block (pre-activation): ``a = act(bn1(x))``; ``out = conv2(drop(act(bn2(conv1(a)))))``;
shortcut = ``x`` when shapes match, else a strided 1x1 conv of ``x``; in the first block of the
first group (``activate_before_residual``) the shortcut takes ``a`` instead of ``x``. This follows
the FixMatch TensorFlow code (the popular PyTorch port computes ``a`` but feeds ``x`` to ``conv1``
in blocks that change width; the parameter count is the same).
WRN-28-2 has 1,467,610 parameters with 10 classes; WRN-28-8 about 23.4M.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.classifier import Classifier, make_classifier


class _WideBasicBlock(nn.Module):
    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int,
        dropout: float,
        bn_momentum: float,
        leaky_slope: float,
        activate_before_residual: bool,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.act1 = nn.LeakyReLU(leaky_slope)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.act2 = nn.LeakyReLU(leaky_slope)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act1(self.bn1(x))
        out = self.conv2(self.dropout(self.act2(self.bn2(self.conv1(a)))))
        residual = a if self.activate_before_residual else x
        return (residual if self.shortcut is None else self.shortcut(residual)) + out


class WideResNetBackbone(nn.Module):
    """WRN-``depth``-``widen_factor`` feature extractor: ``[B, C, H, W] -> [B, 64 * widen_factor]``.

    Works for any input of at least 4x4 pixels (two stride-2 stages, then adaptive average pooling).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 2,
        in_channels: int = 3,
        dropout: float = 0.0,
        bn_momentum: float = 0.001,
        leaky_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(
                f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 28), got {depth}."
            )
        if widen_factor < 1:
            raise ConfigError(f"WideResNet widen_factor must be >= 1, got {widen_factor}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}.")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.feature_dim = channels[3]
        self.stem = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        groups = []
        for g, stride in enumerate((1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(
                    _WideBasicBlock(
                        channels[g] if i == 0 else channels[g + 1],
                        channels[g + 1],
                        stride if i == 0 else 1,
                        dropout,
                        bn_momentum,
                        leaky_slope,
                        activate_before_residual=(g == 0 and i == 0),
                    )
                )
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.final = nn.Sequential(
            nn.BatchNorm2d(channels[3], momentum=bn_momentum), nn.LeakyReLU(leaky_slope)
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def last_conv(self) -> nn.Module:
        """Module whose output is the last feature map (after the final BN + LeakyReLU)."""
        return self.final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.pool(self.final(x))


def wide_resnet(
    depth: int = 28,
    widen_factor: int = 2,
    num_classes: int = 10,
    in_channels: int = 3,
    dropout: float = 0.0,
    bn_momentum: float = 0.001,
    leaky_slope: float = 0.1,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Classifier:
    """FixMatch WideResNet classifier (``mean``/``std`` default: see ``classifier.resolve_stats``).

    The head is initialised Xavier-normal with zero bias, as in the FixMatch reference code.
    """
    backbone = WideResNetBackbone(
        depth, widen_factor, in_channels, dropout, bn_momentum, leaky_slope
    )
    model = make_classifier(backbone, num_classes, in_channels, mean, std)
    nn.init.xavier_normal_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model


def wrn28_2(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
            bn_momentum: float = 0.001, leaky_slope: float = 0.1,
            mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None) -> Classifier:
    """WRN-28-2 (~1.47M parameters), the CIFAR-10/SVHN backbone of FixMatch."""
    return wide_resnet(
        28, 2, num_classes, in_channels, dropout, bn_momentum, leaky_slope, mean, std
    )


def wrn28_8(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
            bn_momentum: float = 0.001, leaky_slope: float = 0.1,
            mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None) -> Classifier:
    """WRN-28-8 (~23.4M parameters), the CIFAR-100 backbone of FixMatch."""
    return wide_resnet(
        28, 8, num_classes, in_channels, dropout, bn_momentum, leaky_slope, mean, std
    )
