"""Model registry: ``build_model(arch, num_classes, in_channels, **kwargs) -> Classifier``.

Every architecture is a backbone that maps ``[B, C, H, W]`` float [0, 1] images (normalised by the
``Classifier``) to pooled penultimate features ``[B, D]``. Each backbone also exposes

- ``feature_dim``: ``D``;
- ``last_conv``: the module whose output is the last convolutional feature map ``[B, D', h, w]``
  (the Grad-CAM target layer);
- ``pool``: the parameter-free module that turns that feature map into the features, so that
  ``backbone(x) == backbone.pool(<output of backbone.last_conv>)``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional, Sequence, Tuple

from torch import nn

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.classifier import CIFAR10_MEAN, CIFAR10_STD, Classifier

ARCHS: Tuple[str, ...] = ("wrn28_2", "wrn28_8", "wide_resnet", "resnet18", "vgg16", "tiny_cnn")


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
    """Wrap ``backbone`` (with a ``feature_dim`` attribute) in a ``Classifier``."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes}.")
    mean_t, std_t = resolve_stats(in_channels, mean, std)
    return Classifier(backbone, backbone.feature_dim, num_classes, mean=mean_t, std=std_t)


def _builders() -> Dict[str, Callable[..., Classifier]]:
    # Imported here: the architecture modules import ``make_classifier`` from this module.
    from lightning_ssl_backdoor.models.resnet import resnet18
    from lightning_ssl_backdoor.models.tiny import tiny_cnn
    from lightning_ssl_backdoor.models.vgg import vgg16
    from lightning_ssl_backdoor.models.wideresnet import wide_resnet, wrn28_2, wrn28_8

    return {
        "wrn28_2": wrn28_2,
        "wrn28_8": wrn28_8,
        "wide_resnet": wide_resnet,
        "resnet18": resnet18,
        "vgg16": vgg16,
        "tiny_cnn": tiny_cnn,
    }


def build_model(arch: str, num_classes: int, in_channels: int = 3, **kwargs) -> Classifier:
    """Build the ``Classifier`` named ``arch`` (one of ``ARCHS``).

    Extra keyword arguments go to the architecture's builder (e.g. ``dropout`` for the WideResNets,
    ``width`` for ``tiny_cnn``, ``mean``/``std`` for all); an unknown name or argument raises
    ``ConfigError``.
    """
    builders = _builders()
    if arch not in builders:
        raise ConfigError(f"Unknown model architecture {arch!r}: choose one of {', '.join(ARCHS)}.")
    builder = builders[arch]
    accepted = set(inspect.signature(builder).parameters) - {"num_classes", "in_channels"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"Model {arch!r} does not accept {', '.join(unknown)}: valid options are "
            f"{', '.join(sorted(accepted))}."
        )
    return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
