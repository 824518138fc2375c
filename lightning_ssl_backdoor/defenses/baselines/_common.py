"""Helpers the baseline defenses share: input checks, batched inference, hooks and a plain SGD loop.

Everything here works on uint8 ``[N, C, H, W]`` images (or float ``[0, 1]`` ones) and integer
labels, with an explicit ``torch.Generator`` for every random draw, so a repair is reproducible from
its seed. Nothing here knows about the experiment runner.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.augment import WeakAugment
from lightning_ssl_backdoor.errors import ConfigError

__all__ = [
    "as_float",
    "check_images_labels",
    "check_positive",
    "capture",
    "context_labeled",
    "context_unlabeled",
    "feature_map_module",
    "make_generator",
    "predict_logits",
    "penultimate_features",
    "sgd_train",
]


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float ``[0, 1]``; float input is returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ConfigError(f"images must be uint8 or float in [0, 1], got {images.dtype}.")
    return images.float()


def check_images_labels(images: torch.Tensor, labels: Optional[torch.Tensor], what: str = "images") -> None:
    """Raise ``ConfigError`` unless ``images`` is ``[N, C, H, W]`` with N > 0 and labels match."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"{what} must be a non-empty N x C x H x W tensor, got {shape}.")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ConfigError(f"{what}: give one label per image ({images.shape[0]} images, labels {tuple(labels.shape)}).")
        if (labels < 0).any():
            raise ConfigError(f"{what}: labels must be known class indices (no -1); pass the labeled set.")


def check_positive(**values: Any) -> None:
    """Raise ``ConfigError`` naming the first value that is not > 0."""
    for name, value in values.items():
        if value is None or not float(value) > 0:
            raise ConfigError(f"{name} must be positive, got {value!r}.")


def make_generator(seed: Optional[int], generator: Optional[torch.Generator] = None) -> torch.Generator:
    """``generator`` if given, else a CPU generator seeded with ``seed`` (0 when ``None``)."""
    return generator if generator is not None else torch.Generator().manual_seed(int(seed or 0))


def feature_map_module(model: nn.Module) -> nn.Module:
    """The module whose output is the model's last conv feature map (``backbone.last_conv``)."""
    backbone = getattr(model, "backbone", None)
    module = getattr(backbone, "last_conv", None)
    if module is None:
        raise ConfigError(
            "this defense needs a Classifier whose backbone exposes `last_conv` (every model in "
            "lightning_ssl_backdoor.models does); wrap your network in `Classifier`."
        )
    return module


@contextmanager
def capture(modules: list[nn.Module]) -> Iterator[list[Optional[torch.Tensor]]]:
    """Forward hooks that store each module's latest output (with its graph) in the yielded list."""
    outputs: list[Optional[torch.Tensor]] = [None] * len(modules)

    def hook_for(i: int) -> Callable:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            outputs[i] = out

        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits ``[N, K]`` of ``images`` (uint8 or float) in eval mode, on the model's device, on CPU."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for s in range(0, images.shape[0], batch_size):
            out.append(model(as_float(images[s : s + batch_size]).to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model.features(x)`` ``[N, D]`` in eval mode (the penultimate layer the detectors score)."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for s in range(0, images.shape[0], batch_size):
            out.append(model.features(as_float(images[s : s + batch_size]).to(device)).float().cpu())
    return torch.cat(out)


def sgd_train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: bool = True,
    generator: Optional[torch.Generator] = None,
    loss_fn: Optional[Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    batch_transform: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple]] = None,
    after_step: Optional[Callable[[nn.Module], None]] = None,
    cosine: bool = True,
) -> nn.Module:
    """Train ``model`` in place for ``steps`` SGD steps on ``(images, labels)``; return it.

    Minibatches are drawn without replacement per pass (reshuffled each pass) from ``generator``;
    ``augment`` applies FixMatch's weak flip-and-shift per sample; ``batch_transform(x, y, g)`` may
    rewrite a batch (Neural Cleanse's unlearning stamps the reversed trigger on part of it);
    ``loss_fn(model, x, y)`` replaces cross entropy (NAD adds its attention term); ``after_step``
    runs after every optimiser step. Cosine learning-rate decay to 0 when ``cosine``.
    """
    check_images_labels(images, labels)
    if int(steps) < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}.")
    check_positive(lr=lr, batch_size=batch_size)
    g = make_generator(None, generator)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / max(1, steps))) if cosine else 1.0
    )
    pad = max(1, images.shape[-1] // 8)
    aug = WeakAugment(pad=pad) if augment and images.shape[-1] > pad else None
    n, bs = images.shape[0], min(int(batch_size), images.shape[0])
    order, pos = torch.randperm(n, generator=g), 0
    model.train()
    for _ in range(int(steps)):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + bs]
        pos += bs
        x, y = as_float(images[idx]), labels[idx]
        if batch_transform is not None:
            x, y = batch_transform(x, y, g)
        if aug is not None:
            x = aug(x, generator=g)
        x, y = x.to(device), y.to(device)
        loss = loss_fn(model, x, y) if loss_fn is not None else F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step(model)
    model.eval()
    return model


def clone(model: nn.Module) -> nn.Module:
    """A deep copy (repairs never modify the model they are given)."""
    return copy.deepcopy(model)


def context_labeled(ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8, labels)`` of the defender's clean labeled set from a defense context."""
    labeled = ctx.split.labeled
    return labeled.images, labeled.labels


def context_unlabeled(ctx: Any) -> torch.Tensor:
    """uint8 images of the (possibly poisoned) unlabeled set from a defense context."""
    return ctx.split.unlabeled.images


def context_seed(ctx: Any) -> int:
    return int(getattr(ctx, "seed", 0) or 0)
