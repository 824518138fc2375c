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
from typing import Callable, Dict, Tuple

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.classifier import Classifier, make_classifier, resolve_stats
from lightning_ssl_backdoor.models.resnet import resnet18
from lightning_ssl_backdoor.models.tiny import tiny_cnn
from lightning_ssl_backdoor.models.vgg import vgg16
from lightning_ssl_backdoor.models.wideresnet import wide_resnet, wrn28_2, wrn28_8

#: name -> builder ``(num_classes, in_channels, **options) -> Classifier``; the architecture
#: modules know nothing of this table (they import only :mod:`.classifier`)
BUILDERS: Dict[str, Callable[..., Classifier]] = {
    "wrn28_2": wrn28_2,
    "wrn28_8": wrn28_8,
    "wide_resnet": wide_resnet,
    "resnet18": resnet18,
    "vgg16": vgg16,
    "tiny_cnn": tiny_cnn,
}
ARCHS: Tuple[str, ...] = tuple(BUILDERS)


def build_model(arch: str, num_classes: int, in_channels: int = 3, **kwargs) -> Classifier:
    """Build the ``Classifier`` named ``arch`` (one of ``ARCHS``).

    Extra keyword arguments go to the architecture's builder (e.g. ``dropout`` for the WideResNets,
    ``width`` for ``tiny_cnn``, ``mean``/``std`` for all); an unknown name or argument raises
    ``ConfigError``.
    """
    if arch not in BUILDERS:
        raise ConfigError(f"Unknown model architecture {arch!r}: choose one of {', '.join(ARCHS)}.")
    builder = BUILDERS[arch]
    accepted = set(inspect.signature(builder).parameters) - {"num_classes", "in_channels"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"Model {arch!r} does not accept {', '.join(unknown)}: valid options are "
            f"{', '.join(sorted(accepted))}."
        )
    return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = ["ARCHS", "BUILDERS", "build_model", "make_classifier", "resolve_stats"]
