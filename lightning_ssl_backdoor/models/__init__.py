"""Models: each architecture is a backbone (pooled penultimate features) in a ``Classifier``."""

from lightning_ssl_backdoor.models.classifier import CIFAR10_MEAN, CIFAR10_STD, Classifier
from lightning_ssl_backdoor.models.registry import ARCHS, build_model, resolve_stats
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
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Classifier",
    "ResNet18Backbone",
    "TinyCNNBackbone",
    "VGG16Backbone",
    "WideResNetBackbone",
    "build_model",
    "resnet18",
    "resolve_stats",
    "tiny_cnn",
    "vgg16",
    "wide_resnet",
    "wrn28_2",
    "wrn28_8",
]
