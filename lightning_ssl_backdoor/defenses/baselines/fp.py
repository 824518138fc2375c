"""``fp``: fine-pruning (Liu, Dolan-Gavitt and Garg, "Fine-Pruning: Defending Against Backdooring
Attacks on Deep Neural Networks", RAID 2018).

Algorithm (Sec. 4.2-4.3): run the clean data through the network and record the mean activation of
every channel of the LAST convolutional layer, ``a_c = mean_(x, h, w) F_c(x)[h, w]``; prune the
channels in increasing order of ``a_c`` (dormant on clean data first, where the backdoor hides) until
the clean validation accuracy falls by more than ``max_accuracy_drop`` (the paper stops at 4%), or
until a fixed ``prune_ratio``; then fine-tune the pruned network on the clean data (BI (001) App. B:
"prune the parameters of the last convolutional layer ... not activated by benign data ... then
fine-tune ... using the available benign labeled data").

Implementation: every model here ends ``head(pool(last_conv(x)))`` with a channel-wise pool, so
removing channel ``c`` of the last feature map is exactly zeroing column ``c`` of the head's weight.
The columns are pruned with ``torch.nn.utils.prune`` (so they stay zero while fine-tuning) and the
mask is baked in afterwards. Accuracy after pruning ``k`` channels is computed from cached features,
so the stopping search costs one forward pass. Defaults: ``max_accuracy_drop = 0.04`` (the paper),
fine-tuning as :mod:`.ft` (``lr 0.01``, 10 epochs).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn.utils import prune

from lightning_ssl_backdoor.defenses.base import ModelDefense, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import (
    to_defense_device,
    as_float,
    capture,
    check_benign,
    check_images_labels,
    check_positive,
    clone,
    context_labeled,
    context_seed,
    eval_mode,
    feature_map_module,
    make_generator,
    penultimate_features,
    report,
    sgd_train,
)
from lightning_ssl_backdoor.defenses.baselines.ft import epochs_to_steps
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.interface import require

__all__ = ["FinePruning", "fine_prune", "mean_channel_activation", "pruning_order", "prune_channels"]


#: what fine-pruning reads of a model besides forward (models/interface.py)
REQUIRES = ("features", "head", "last_conv")


@torch.no_grad()
def mean_channel_activation(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``a_c``: mean over images and positions of each channel of the last conv feature map, ``[D]``."""
    module, device = feature_map_module(model, "fine-pruning"), next(model.parameters()).device
    total, count = None, 0
    with eval_mode(model), capture([module]) as out:
        for s in range(0, images.shape[0], batch_size):
            x = as_float(images[s : s + batch_size]).to(device)
            model(x)
            fmap = out[0].float()
            part = fmap.sum(dim=(0, 2, 3)).cpu() if fmap.ndim == 4 else fmap.sum(0).cpu()
            total = part if total is None else total + part
            count += fmap.shape[0] * (fmap.shape[2] * fmap.shape[3] if fmap.ndim == 4 else 1)
    return total / count


def pruning_order(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Channels of the last conv layer, least active on ``images`` first (ties: lower index first)."""
    return torch.sort(mean_channel_activation(model, images), stable=True).indices


def prune_channels(model: nn.Module, channels: torch.Tensor) -> nn.Module:
    """Remove ``channels`` of the last feature map in place (zero the head columns, kept zero by a mask)."""
    head = require(model, ("head",), "fine-pruning").head
    mask = torch.ones_like(head.weight)
    mask[:, torch.as_tensor(channels, dtype=torch.long)] = 0.0
    if prune.is_pruned(head):
        prune.remove(head, "weight")
    prune.custom_from_mask(head, "weight", mask)
    return model


@torch.no_grad()
def _accuracy_by_pruned_count(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                              order: torch.Tensor) -> torch.Tensor:
    """Clean accuracy ``[D + 1]`` after pruning the first ``k = 0..D`` channels of ``order``."""
    feats = penultimate_features(model, images)
    w, b = model.head.weight.detach().float().cpu(), model.head.bias.detach().float().cpu()
    logits = feats @ w.T + b
    accs = [(logits.argmax(1) == labels).float().mean()]
    for c in order.tolist():
        logits = logits - feats[:, c : c + 1] * w[:, c][None]
        accs.append((logits.argmax(1) == labels).float().mean())
    return torch.stack(accs)


def fine_prune(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    prune_ratio: Optional[float] = None,
    max_accuracy_drop: float = 0.04,
    ft_steps: int = 500,
    lr: float = 0.01,
    batch_size: int = 64,
    generator: Optional[torch.Generator] = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune (``prune_ratio`` of the channels, or as many as keep accuracy within ``max_accuracy_drop``
    of the unpruned model's on ``images``), fine-tune for ``ft_steps``; return ``(model copy, info)``."""
    check_images_labels(images, labels, "fine-pruning images")
    model = clone(require(model, REQUIRES, "fine_prune"))
    order = pruning_order(model, images)
    d = order.numel()
    if d != model.head.in_features:
        raise ConfigError(
            f"fine_prune: the last conv layer has {d} channels but the head takes {model.head.in_features} "
            "features; name the conv layer whose channels are pooled into the features: "
            "wrap_backbone(net, num_classes, last_conv='<its name in net.named_modules()>')."
        )
    if prune_ratio is not None:
        if not 0.0 <= float(prune_ratio) < 1.0:
            raise ConfigError(f"prune_ratio must lie in [0, 1), got {prune_ratio}.")
        k = int(round(float(prune_ratio) * d))
    else:
        accs = _accuracy_by_pruned_count(model, images, labels, order)
        bad = torch.nonzero(accs < accs[0] - float(max_accuracy_drop)).flatten()
        k = min(d - 1, int(bad[0]) - 1 if bad.numel() else d - 1)  # stop before the first excess drop
    if k > 0:
        prune_channels(model, order[:k])
    if ft_steps > 0:
        sgd_train(model, images, labels, ft_steps, lr, batch_size=batch_size, generator=make_generator(0, generator),
                  log_name="finetune")
    if prune.is_pruned(model.head):
        prune.remove(model.head, "weight")
    return model, {"pruned_channels": k, "num_channels": d, "pruned": order[:k].tolist()}


@register_defense
class FinePruning(ModelDefense):
    """``defense: fp``: ``repair(model, ctx)`` fine-prunes on the defender's benign labeled data."""

    name = "fp"
    requires = REQUIRES

    def __init__(self, prune_ratio: Optional[float] = None, max_accuracy_drop: float = 0.04, lr: float = 0.01,
                 epochs: float = 10, batch_size: int = 64, benign: str = "labeled") -> None:
        check_positive(lr=lr, epochs=epochs, batch_size=batch_size)
        self.benign = check_benign(benign)
        self.prune_ratio, self.max_accuracy_drop = prune_ratio, float(max_accuracy_drop)
        self.lr, self.epochs, self.batch_size = float(lr), float(epochs), int(batch_size)
        self.info: dict[str, Any] = {}

    def repair(self, model: nn.Module, ctx: Any) -> nn.Module:
        model = to_defense_device(model, ctx)
        images, labels = context_labeled(ctx, self.benign)
        steps = epochs_to_steps(self.epochs, len(labels), self.batch_size)
        repaired, self.info = fine_prune(model, images, labels, self.prune_ratio, self.max_accuracy_drop, steps,
                                         self.lr, self.batch_size, torch.Generator().manual_seed(context_seed(ctx)))
        report(ctx, self.info)
        return repaired
