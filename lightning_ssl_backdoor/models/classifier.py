"""`Classifier`: backbone + linear head, with input normalisation inside the model.

Attacks, triggers and defenses all work in [0, 1] pixel space; the model normalises with its own
``mean``/``std`` buffers, so nothing outside it needs to know the dataset statistics.
:func:`make_classifier` wraps a built-in backbone, :func:`wrap_backbone` any module that maps
images to feature vectors (a user's own network, a timm model with ``num_classes=0``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from lightning_ssl_backdoor.errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class Classifier(nn.Module):
    """``head(backbone(normalise(x)))``.

    ``backbone`` maps ``[B, C, H, W]`` to ``[B, feature_dim]`` penultimate features;
    ``head`` is the last ``nn.Linear``. ``last_conv``: the name (in ``backbone.named_modules()``)
    of the module whose output is the last conv feature map, for the defenses that read it
    (fine-pruning, NAD, Grad-CAM); ``None`` uses ``backbone.last_conv`` where the backbone has one.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        last_conv: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        if last_conv is not None and last_conv not in dict(backbone.named_modules()):
            raise ConfigError(
                f"last_conv {last_conv!r} is not a module of the backbone; give a name from "
                "backbone.named_modules() (e.g. 'layer4' or 'features.28')."
            )
        self.last_conv_name = last_conv  # a name, not a second reference: the state_dict stays as it was

    @property
    def last_conv(self) -> Optional[nn.Module]:
        """The module whose output is the last conv feature map (see the class docstring), or ``None``."""
        if self.last_conv_name is not None:
            return self.backbone.get_submodule(self.last_conv_name)
        layer = getattr(self.backbone, "last_conv", None)
        return layer if isinstance(layer, nn.Module) else None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, feature_dim]`` of float [0, 1] images."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resolve_stats(
    in_channels: int,
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel normalisation statistics for a model with ``in_channels`` inputs.

    ``None`` means: the CIFAR-10 statistics for 3 channels, ``0.5`` / ``0.5`` per channel otherwise
    (maps [0, 1] to [-1, 1]). A single value is broadcast to every channel.
    """
    if in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels}.")
    if mean is None:
        mean = CIFAR10_MEAN if in_channels == 3 else (0.5,) * in_channels
    if std is None:
        std = CIFAR10_STD if in_channels == 3 else (0.5,) * in_channels
    mean = tuple(float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean]))
    std = tuple(float(s) for s in (std if isinstance(std, (list, tuple)) else [std]))
    if len(mean) == 1:
        mean = mean * in_channels
    if len(std) == 1:
        std = std * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(
            f"mean and std need one value per input channel ({in_channels}), got {len(mean)} "
            f"and {len(std)}: pass {in_channels} values or a single one."
        )
    if any(s <= 0 for s in std):
        raise ConfigError(f"std values must be positive, got {std}.")
    return mean, std


def make_classifier(
    backbone: nn.Module,
    num_classes: int,
    in_channels: int,
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
) -> Classifier:
    """Wrap a built-in ``backbone`` (with a ``feature_dim`` attribute) in a ``Classifier``."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes}.")
    mean_t, std_t = resolve_stats(in_channels, mean, std)
    return Classifier(backbone, backbone.feature_dim, num_classes, mean=mean_t, std=std_t)


def find_last_conv(backbone: nn.Module, feature_dim: Optional[int] = None) -> Optional[str]:
    """The name of ``backbone``'s last ``nn.Conv2d`` in registration order (the order of
    ``named_modules()``, which is the order of the forward pass in most networks); with
    ``feature_dim``, the last one with that many output channels. ``backbone.last_conv`` wins where
    the backbone has one (returns ``None``: the Classifier reads it there)."""
    if isinstance(getattr(backbone, "last_conv", None), nn.Module):
        return None
    convs = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    matching = [n for n, m in convs if feature_dim is None or m.out_channels == feature_dim]
    return matching[-1] if matching else None


def wrap_backbone(
    backbone: nn.Module,
    num_classes: int,
    feature_dim: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    last_conv: Optional[str | nn.Module] = None,
) -> Classifier:
    """A :class:`Classifier` around any ``backbone`` that maps images to feature vectors ``[B, D]``.

    The result follows the model interface every SSL module, surrogate and defense relies on
    (``features``, ``head``, ``num_classes``, ``feature_dim``, ``backbone``, ``last_conv``; see
    :mod:`.interface`).

    Args:
        backbone: maps float images ``[B, C, H, W]`` to ``[B, D]`` (flatten any pooled map inside).
        num_classes: outputs of the new linear head.
        feature_dim: ``D``; ``None`` reads ``backbone.feature_dim`` (or ``num_features``, as timm
            names it).
        mean, std: per-channel statistics the wrapper normalises [0, 1] images with before the
            backbone (one value per channel or a single value for all). ``None`` passes the [0, 1]
            images through unchanged (for a backbone that normalises on its own).
        last_conv: the module whose output is the last conv feature map (fine-pruning, NAD and
            Grad-CAM read it), as a name in ``backbone.named_modules()`` or the module itself;
            ``None`` finds it (:func:`find_last_conv`: ``backbone.last_conv`` if there is one,
            else the last ``nn.Conv2d`` with ``feature_dim`` output channels).
    """
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"wrap_backbone needs an nn.Module backbone, got {type(backbone).__name__}.")
    if feature_dim is None:
        feature_dim = getattr(backbone, "feature_dim", None) or getattr(backbone, "num_features", None)
    if not isinstance(feature_dim, int) or feature_dim < 1:
        raise ConfigError(
            f"wrap_backbone cannot tell the feature size of {type(backbone).__name__}: pass "
            "feature_dim= (the length of the vectors the backbone returns)."
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if (mean is None) != (std is None):
        raise ConfigError("wrap_backbone needs mean and std together (or neither, for no normalisation).")
    if mean is None:
        mean_t: Sequence[float] = (0.0,)
        std_t: Sequence[float] = (1.0,)
    else:
        mean_t = [float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean])]
        std_t = [float(s) for s in (std if isinstance(std, (list, tuple)) else [std])]
        if len(mean_t) == 1 or len(std_t) == 1:  # a single value is broadcast to every channel
            n = max(len(mean_t), len(std_t))
            mean_t, std_t = mean_t * (n // len(mean_t)), std_t * (n // len(std_t))
        if len(mean_t) != len(std_t) or any(s <= 0 for s in std_t):
            raise ConfigError(f"mean and std need the same length and positive std, got {mean_t} and {std_t}.")
    if isinstance(last_conv, nn.Module):
        name = next((n for n, m in backbone.named_modules() if m is last_conv), None)
        if name is None:
            raise ConfigError("wrap_backbone's last_conv module is not part of the backbone; pass one of its modules.")
        last_conv = name
    elif last_conv is None:
        last_conv = find_last_conv(backbone, feature_dim)
    return Classifier(backbone, feature_dim, num_classes, mean=mean_t, std=std_t, last_conv=last_conv)
