"""The model interface the package relies on, and how a model of your own gets in.

Every SSL module (:class:`~lightning_ssl_backdoor.ssl.base.SSLModule`, and so every defense stage
built on it: DBD's SimCLR / linear head / fine-tuning, DePuD's detector, the Backdoor Invalidator's
hosts), the attacker's surrogate (:func:`~lightning_ssl_backdoor.attacks.surrogate.train_surrogate`)
and the attacks that use a model touch only these members of it:

- ``forward(x) -> [B, num_classes]`` logits of float images ``x`` ``[B, C, H, W]`` in [0, 1].
  Normalisation (the dataset's mean / std) belongs inside the model: attacks, triggers and
  augmentations all work in [0, 1] pixel space.
- ``features(x) -> [B, D]``: the penultimate features, so that ``forward(x) == head(features(x))``
  (DeNeB's feature-space objective, the clustering defense's feature space, DBD's linear stage).
- ``head``: the last layer, an ``nn.Linear(D, num_classes)``.
- ``num_classes``: an int (when absent it is read from ``head.out_features``).

Defenses: a defense uses ``forward`` alone unless it says otherwise. Each declares what more it
needs in its class attribute ``requires`` (a tuple of :data:`MEMBERS` keys) and checks the model
through :func:`require` before it uses it (at the start of its run for a model given in the row's
``model_args``, and in every function that takes a model), so a model that lacks a member fails
with one sentence naming the member and how to add it:

- ``features`` and ``head`` (above): the feature-space detectors (spectral signatures, activation
  clustering, clustering on features, self-training), fine-pruning;
- ``last_conv``: the module whose output is the last convolutional feature map ``[B, C, h, w]``:
  fine-pruning (whose channels must be the ``head``'s inputs), NAD's attention maps, Grad-CAM.
  Found as ``model.last_conv`` or ``model.backbone.last_conv`` (:func:`last_conv_of`);
- ``backbone`` with ``feature_dim``: DBD moves the backbone between its stages.

A :class:`~lightning_ssl_backdoor.models.Classifier` has all of them:
:func:`~lightning_ssl_backdoor.models.wrap_backbone` turns any module that maps images to feature
vectors into one, and its ``last_conv`` argument names (or, by default, finds) the last conv layer.

A model is given either as an instance, or (in YAML, and wherever a config must stay plain data) as
a mapping ``{"class_path": "package.module.Class", "init_args": {...}}`` in the style of
jsonargparse / LightningCLI: a value of ``init_args`` that is itself such a mapping is built first
(e.g. a ``Classifier`` around your backbone). Only a mapping with an explicit ``class_path`` is
ever imported; a plain name (``arch``) goes through the registry (:func:`.registry.build_model`).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.registry import build_model

#: what a ``model`` argument accepts: an instance or a class_path mapping
ModelSpec = Union[nn.Module, Mapping[str, Any]]


def _is_class_path(value: Any) -> bool:
    return isinstance(value, Mapping) and "class_path" in value


def instantiate(spec: Mapping[str, Any]) -> nn.Module:
    """Build the ``nn.Module`` a ``{"class_path": ..., "init_args": {...}}`` mapping names."""
    if not _is_class_path(spec):
        got = f"keys {sorted(map(str, spec))}" if isinstance(spec, Mapping) else type(spec).__name__
        raise ConfigError(
            f"a model mapping needs an explicit class_path, got {got}: write "
            "{'class_path': 'package.module.Class', 'init_args': {...}}."
        )
    extra = sorted(set(spec) - {"class_path", "init_args"})
    if extra:
        raise ConfigError(f"a model mapping has only class_path and init_args, got also {', '.join(extra)}.")
    path = spec["class_path"]
    module_name, _, class_name = str(path).rpartition(".")
    if not module_name or not class_name:
        raise ConfigError(f"class_path {path!r} is not a dotted path: write 'package.module.Class'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"class_path {path!r}: cannot import {module_name} ({e}); check the path and PYTHONPATH.") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"class_path {path!r} does not name an nn.Module subclass in {module_name}.")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ConfigError(f"init_args of {path} must be a mapping of keyword arguments, got {init_args!r}.")
    kwargs = {k: instantiate(v) if _is_class_path(v) else v for k, v in init_args.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{path} does not accept init_args {sorted(kwargs)} ({e}).") from None


def model_num_classes(model: nn.Module) -> int:
    """``model.num_classes``, else the output size of its ``head``."""
    n = getattr(model, "num_classes", None)
    if n is None and isinstance(getattr(model, "head", None), nn.Linear):
        n = model.head.out_features
    if n is None:
        raise ConfigError(f"{type(model).__name__} has neither num_classes nor a Linear head; see models/interface.py.")
    return int(n)


def check_model(model: Any, num_classes: Optional[int] = None) -> nn.Module:
    """Return ``model`` if it follows the interface of the module docstring (and has
    ``num_classes`` outputs when given), else raise :class:`ConfigError` saying what is missing."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be an nn.Module or a {{'class_path': ..., 'init_args': ...}} mapping, got {type(model).__name__}."
        )
    name = type(model).__name__
    if not callable(getattr(model, "features", None)):
        raise ConfigError(
            f"{name} has no features(x) method: the package needs penultimate features [B, D]; "
            "wrap a plain backbone with lightning_ssl_backdoor.models.wrap_backbone."
        )
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"{name}.head must be the last nn.Linear layer, got {type(head).__name__}; "
            "wrap a plain backbone with lightning_ssl_backdoor.models.wrap_backbone."
        )
    own = getattr(model, "num_classes", None)
    if own is not None and int(own) != head.out_features:
        raise ConfigError(f"{name}.num_classes is {own} but its head has {head.out_features} outputs; make them agree.")
    dim = getattr(model, "feature_dim", None)
    if dim is not None and int(dim) != head.in_features:
        raise ConfigError(f"{name}.feature_dim is {dim} but its head takes {head.in_features} features; make them agree.")
    if num_classes is not None and head.out_features != int(num_classes):
        raise ConfigError(
            f"{name} has {head.out_features} outputs but this module needs num_classes={num_classes}: "
            f"build the model with {num_classes} classes."
        )
    return model


#: what a defense may need of a model beyond ``forward``: (what it is, how a model gets it)
MEMBERS: dict[str, tuple[str, str]] = {
    "features": (
        "a features(x) method returning the penultimate features [B, D], with forward(x) == head(features(x))",
        "add that method, or wrap a plain backbone: lightning_ssl_backdoor.models.wrap_backbone(net, num_classes)",
    ),
    "head": (
        "a head attribute, its last layer, an nn.Linear(D, num_classes)",
        "name its last nn.Linear layer head, or wrap a plain backbone: "
        "lightning_ssl_backdoor.models.wrap_backbone(net, num_classes)",
    ),
    "last_conv": (
        "a last_conv module, whose output is its last convolutional feature map [B, C, h, w]",
        "wrap the backbone with lightning_ssl_backdoor.models.wrap_backbone(net, num_classes, "
        "last_conv='<name of that module in net.named_modules()>'), or give the model a last_conv property "
        "returning that module",
    ),
    "backbone": (
        "a backbone module (what features(x) runs after normalising) and an int feature_dim",
        "wrap the backbone with lightning_ssl_backdoor.models.wrap_backbone(net, num_classes)",
    ),
}


def last_conv_of(model: nn.Module) -> Optional[nn.Module]:
    """The module whose output is ``model``'s last conv feature map: ``model.last_conv`` (a
    :class:`Classifier` made by ``wrap_backbone(..., last_conv=...)``, or a model of your own), else
    ``model.backbone.last_conv`` (every built-in backbone); ``None`` when neither exists."""
    for owner in (model, getattr(model, "backbone", None)):
        layer = getattr(owner, "last_conv", None) if owner is not None else None
        if isinstance(layer, nn.Module):
            return layer
    return None


def _has(model: nn.Module, member: str) -> bool:
    if member == "features":
        return callable(getattr(model, "features", None))
    if member == "head":
        return isinstance(getattr(model, "head", None), nn.Linear)
    if member == "last_conv":
        return last_conv_of(model) is not None
    return isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(getattr(model, "feature_dim", None), int)


def _conv_names(model: nn.Module, last: int = 3) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return f" (its conv layers end with {', '.join(names[-last:])})" if names else " (it has no nn.Conv2d)"


def require(model: Any, requires: Sequence[str], who: str) -> nn.Module:
    """Return ``model`` if it has every member of ``requires`` (keys of :data:`MEMBERS`), else raise
    :class:`ConfigError` naming ``who`` (the defense or function), the first missing member and how
    to add it."""
    unknown = sorted(set(requires) - set(MEMBERS))
    if unknown:
        raise ValueError(f"{who} requires unknown model members {unknown}; choose from {sorted(MEMBERS)}.")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{who} needs an nn.Module model with forward(x) -> logits, got {type(model).__name__}.")
    for member in requires:
        if not _has(model, member):
            what, fix = MEMBERS[member]
            where = ""
            if member == "last_conv":
                where = _conv_names(getattr(model, "backbone", model))
            raise ConfigError(f"{who} needs {what}, which {type(model).__name__} lacks{where}: {fix}.")
    return model


def resolve_model(
    model: Optional[ModelSpec],
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """The model a module should train: ``model`` (an instance, used as is, or a class_path mapping,
    built) checked against the interface, or, when ``model`` is ``None``, the registry's ``arch``
    built with ``model_kwargs``."""
    if model is None:
        return build_model(arch, num_classes=num_classes, in_channels=in_channels, **dict(model_kwargs or {}))
    if isinstance(model, str):
        raise ConfigError(
            f"model {model!r} cannot be rebuilt from a name: a module trained with a model instance "
            "needs it again (load_from_checkpoint(path, model=MyNet(...))), a class_path mapping "
            "names your class, and built-in models are chosen with arch."
        )
    if model_kwargs:
        raise ConfigError(
            "model_kwargs configure a built-in arch and cannot apply to a given model: put those "
            "settings in the model's own init_args."
        )
    if isinstance(model, Mapping):
        model = instantiate(model)
    return check_model(model, num_classes)


__all__ = [
    "MEMBERS",
    "ModelSpec",
    "check_model",
    "instantiate",
    "last_conv_of",
    "model_num_classes",
    "require",
    "resolve_model",
]
