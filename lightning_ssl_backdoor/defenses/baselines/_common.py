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
from lightning_ssl_backdoor.defenses.repair_log import step_logger
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.interface import last_conv_of, require

__all__ = [
    "as_float",
    "check_images_labels",
    "check_benign",
    "check_positive",
    "capture",
    "context_labeled",
    "context_unlabeled",
    "feature_map_module",
    "make_generator",
    "predict_logits",
    "penultimate_features",
    "report",
    "sgd_train",
    "to_defense_device",
]


class BehindTransform(nn.Module):
    """``model(transform(x))``: a deployed model with a test-time input transform in front of it,
    ``features`` included (ShrinkPad, Pal et al.'s strong augmentation). Subclasses may override
    :meth:`prepare` (e.g. to pass a generator)."""

    def __init__(self, model: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.transform = model, transform

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(x))


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


def feature_map_module(model: nn.Module, who: str = "this defense") -> nn.Module:
    """The module whose output is the model's last conv feature map (``last_conv``: see
    :func:`lightning_ssl_backdoor.models.last_conv_of`); ``ConfigError`` naming ``who`` and the fix
    when the model has none."""
    require(model, ("last_conv",), who)
    return last_conv_of(model)


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
    log_name: str = "sgd",
) -> nn.Module:
    """Train ``model`` in place for ``steps`` SGD steps on ``(images, labels)``; return it.

    Minibatches are drawn without replacement per pass (reshuffled each pass) from ``generator``;
    ``augment`` applies FixMatch's weak flip-and-shift per sample; ``batch_transform(x, y, g)`` may
    rewrite a batch (Neural Cleanse's unlearning stamps the reversed trigger on part of it);
    ``loss_fn(model, x, y)`` replaces cross entropy (NAD adds its attention term); ``after_step``
    runs after every optimiser step. Cosine learning-rate decay to 0 when ``cosine``. Inside a
    defense's :func:`~lightning_ssl_backdoor.defenses.repair_log.repair_logging` block the loss and
    learning rate go to TensorBoard as the run ``<defense>-<log_name>``.
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
    log = step_logger(log_name, int(steps))
    model.train()
    for step in range(int(steps)):
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
        if log is not None:
            log(step, loss.item, opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if after_step is not None:
            after_step(model)
    model.eval()
    return model


def clone(model: nn.Module) -> nn.Module:
    """A deep copy (repairs never modify the model they are given)."""
    return copy.deepcopy(model)


#: where a model repair takes the defender's benign data from (``benign`` option of every repair)
BENIGN_SOURCES = ("labeled", "unpoisoned_labeled")


def check_benign(benign: str) -> str:
    if benign not in BENIGN_SOURCES:
        raise ConfigError(f"benign must be one of {list(BENIGN_SOURCES)}, got {benign!r}.")
    return benign


def context_labeled(ctx: Any, benign: str = "labeled") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8, labels)`` of the defender's benign labeled data from a defense context.

    ``benign = "labeled"``: the whole labeled set (trusted: the SSL threat model, where the poisons
    hide among the unlabeled images). ``"unpoisoned_labeled"``: the labeled images outside the
    ground-truth poison mask, which emulates the supervised baselines' assumption that the defender
    holds a benign subset of the training data (DBD (003) App. B.3: 5% benign samples) when the
    attack relabels labeled images (BadNets / Blended / WaNet); an oracle choice, so the repair
    records it in ``ctx.info``. With ``"labeled"`` and a poisoned labeled set, the number of poisons
    the repair trains on is recorded too.
    """
    labeled = ctx.split.labeled
    mask = getattr(ctx.split, "labeled_poison_mask", None)
    mask = torch.zeros(len(labeled), dtype=torch.bool) if mask is None else mask.cpu().bool()
    info = getattr(ctx, "info", None)
    if check_benign(benign) == "unpoisoned_labeled":
        keep = torch.nonzero(~mask).flatten()
        if keep.numel() == 0:
            raise ConfigError("every labeled image is poisoned; there is no benign data to repair with.")
        if isinstance(info, dict):
            info.update(benign_data="unpoisoned_labeled (oracle)", benign_images=int(keep.numel()))
        return labeled.images[keep], labeled.labels[keep]
    if isinstance(info, dict):
        info.update(benign_data="labeled", benign_images=len(labeled), benign_poisons=int(mask.sum()))
    return labeled.images, labeled.labels


def to_defense_device(model: nn.Module, ctx: Any) -> nn.Module:
    """``model`` on the GPU when the row trains on one (``trainer.accelerator`` gpu / cuda / auto)."""
    trainer = getattr(ctx, "trainer", None)
    acc = str(getattr(trainer, "accelerator", "cpu")).lower()
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return model.to("cuda")
    return model


def report(ctx: Any, info: dict) -> None:
    """Merge a repair's diagnostics into ``ctx.info`` (the row's ``defense_info``)."""
    target = getattr(ctx, "info", None)
    if isinstance(target, dict):
        target.update(info)


def context_unlabeled(ctx: Any) -> torch.Tensor:
    """uint8 images of the (possibly poisoned) unlabeled set from a defense context."""
    return ctx.split.unlabeled.images


def context_seed(ctx: Any) -> int:
    return int(getattr(ctx, "seed", 0) or 0)
