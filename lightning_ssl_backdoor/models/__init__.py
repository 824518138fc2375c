"""Models: each architecture is a backbone (pooled penultimate features) in a ``Classifier``.

Your own model works wherever a built-in one does if it follows the interface of
:mod:`.interface` (``features(x)``, ``head``, ``num_classes``); :func:`wrap_backbone` makes one of
any module that maps images to feature vectors.
"""

from lightning_ssl_backdoor.models.classifier import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Classifier,
    make_classifier,
    resolve_stats,
    wrap_backbone,
)
from lightning_ssl_backdoor.models.interface import (
    MEMBERS,
    ModelSpec,
    check_model,
    instantiate,
    last_conv_of,
    model_num_classes,
    require,
    resolve_model,
)
from lightning_ssl_backdoor.models.registry import ARCHS, BUILDERS, build_model
from lightning_ssl_backdoor.models.resnet import ResNet18Backbone, resnet18
from lightning_ssl_backdoor.models.tiny import TinyCNNBackbone, tiny_cnn
from lightning_ssl_backdoor.models.vgg import VGG16Backbone, vgg16
from lightning_ssl_backdoor.models.wideresnet import (
    WideResNetBackbone,
    wide_resnet,
    wrn28_2,
    wrn28_8,
)

__all__ = [
    "ARCHS",
    "BUILDERS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Classifier",
    "MEMBERS",
    "ModelSpec",
    "ResNet18Backbone",
    "TinyCNNBackbone",
    "VGG16Backbone",
    "WideResNetBackbone",
    "build_model",
    "check_model",
    "instantiate",
    "last_conv_of",
    "make_classifier",
    "model_num_classes",
    "require",
    "resnet18",
    "resolve_model",
    "resolve_stats",
    "tiny_cnn",
    "vgg16",
    "wide_resnet",
    "wrap_backbone",
    "wrn28_2",
    "wrn28_8",
]
