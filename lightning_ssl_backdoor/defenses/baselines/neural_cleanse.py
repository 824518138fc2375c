"""``neural_cleanse``: trigger reverse engineering, outlier detection and unlearning (Wang, Yao,
Shan, Li, Viswanath, Zheng and Zhao, "Neural Cleanse: Identifying and Mitigating Backdoor Attacks
in Neural Networks", IEEE S&P 2019).

Algorithm: (1) for every class ``y`` find the smallest trigger that sends clean images there,
``x' = (1 - m) * x + m * Delta`` with a mask ``m`` in [0, 1]^(H x W) and a pattern ``Delta`` in
[0, 1]^(C x H x W): ``min_(m, Delta) CE(f(x'), y) + lambda * |m|_1`` (Sec. IV-B, Eq. 3), with Adam
(lr 0.1, betas (0.5, 0.9)), ``m = sigmoid(m_raw)``, ``Delta = sigmoid(Delta_raw)``, and the paper's
cost schedule: ``lambda`` starts at 1e-3 and, checked every ``check_every`` steps, is multiplied by
1.5 after ``patience`` checks in a row where the reversed trigger's attack success reaches 99%, or
divided by 1.5^1.5 after ``patience`` checks below it; the smallest-norm mask reaching 99% is kept.
(2) anomaly index (Sec. IV-C): with ``n_y = |m_y|_1``, ``MAD = 1.4826 * median_y |n_y - median(n)|``
and ``index_y = |n_y - median(n)| / MAD``; a class with ``index_y > 2`` and ``n_y < median(n)`` is
infected. (3) unlearning (Sec. VI-C): fine-tune on the clean data with the reversed trigger of an
infected class stamped on 20% of every batch, keeping the true labels (one epoch at lr 0.01 in the
paper's patching; here ``unlearn_epochs``). No infected class: the model is returned unchanged.
DBD (003) App. B.3: the defender's benign data (5% of the training set there; the labeled set here).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.defenses.base import ModelDefense, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import (
    to_defense_device,
    as_float,
    check_benign,
    check_images_labels,
    check_positive,
    clone,
    context_labeled,
    context_seed,
    make_generator,
    report,
    sgd_train,
)
from lightning_ssl_backdoor.defenses.baselines.ft import epochs_to_steps
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["NeuralCleanse", "mad_anomaly_index", "neural_cleanse", "reverse_engineer_trigger", "stamp"]

MAD_CONSISTENCY = 1.4826


def mad_anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """``|n - median(n)| / (1.4826 * median |n - median(n)|)`` per class (NC Sec. IV-C).

    The median of an even count is the mean of the two middle values (as numpy's). A MAD of zero
    (most norms equal) gives ``inf`` for the classes off the median and 0 for those on it.
    """
    n = torch.as_tensor(norms, dtype=torch.float64).reshape(-1)
    if n.numel() < 2:
        raise ConfigError("the anomaly index needs the trigger norms of at least two classes.")
    med = n.quantile(0.5)
    dev = (n - med).abs()
    mad = MAD_CONSISTENCY * dev.quantile(0.5)
    return torch.where(dev == 0, torch.zeros_like(dev), dev / mad)


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """``(1 - m) * x + m * Delta`` on a float batch."""
    return (1 - mask) * x + mask * pattern


def reverse_engineer_trigger(
    model: nn.Module,
    images: torch.Tensor,
    target: int,
    steps: int = 300,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    batch_size: int = 64,
    success_threshold: float = 0.99,
    check_every: int = 10,
    patience: int = 5,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """``(mask [1, H, W], pattern [C, H, W], info)`` of the smallest trigger sending ``images`` to ``target``."""
    check_images_labels(images, None, "Neural Cleanse images")
    g = make_generator(0, generator)
    device = next(model.parameters()).device
    c, h, w = images.shape[1:]
    m_raw = (torch.randn(1, h, w, generator=g) * 0.1 - 2.0).to(device).requires_grad_()
    p_raw = (torch.randn(c, h, w, generator=g) * 0.1).to(device).requires_grad_()
    opt = torch.optim.Adam([m_raw, p_raw], lr=lr, betas=(0.5, 0.9))
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    cost, up, down, hits = float(init_cost), 0, 0, []
    best = (float("inf"), None, None)
    bs = min(int(batch_size), images.shape[0])
    tgt = torch.full((bs,), int(target), dtype=torch.long, device=device)
    try:
        for step in range(int(steps)):
            x = as_float(images[torch.randint(0, images.shape[0], (bs,), generator=g)]).to(device)
            mask, pattern = torch.sigmoid(m_raw), torch.sigmoid(p_raw)
            logits = model(stamp(x, mask, pattern))
            loss = F.cross_entropy(logits, tgt) + cost * mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            hits.append(float((logits.argmax(1) == tgt).float().mean()))
            if (step + 1) % check_every == 0:
                rate, hits = sum(hits) / len(hits), []
                norm = float(mask.detach().sum())
                if rate >= success_threshold:
                    if norm < best[0]:
                        best = (norm, mask.detach().clone(), pattern.detach().clone())
                    up, down = up + 1, 0
                else:
                    up, down = 0, down + 1
                if up >= patience:
                    cost, up = cost * 1.5, 0
                elif down >= patience:
                    cost, down = cost / 1.5**1.5, 0
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    if best[1] is None:
        best = (float(torch.sigmoid(m_raw).sum()), torch.sigmoid(m_raw).detach(), torch.sigmoid(p_raw).detach())
    return best[1].cpu(), best[2].cpu(), {"l1_norm": best[0], "final_cost": cost}


def neural_cleanse(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    reverse_steps: int = 300,
    unlearn_steps: int = 200,
    unlearn_lr: float = 0.01,
    stamp_fraction: float = 0.2,
    threshold: float = 2.0,
    batch_size: int = 64,
    generator: Optional[torch.Generator] = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Reverse a trigger per class, flag classes by the anomaly index, unlearn their triggers."""
    check_images_labels(images, labels, "Neural Cleanse images")
    if not 0.0 < float(stamp_fraction) < 1.0:
        raise ConfigError(f"stamp_fraction must lie in (0, 1), got {stamp_fraction}.")
    g = make_generator(0, generator)
    triggers = [reverse_engineer_trigger(model, images, y, reverse_steps, batch_size=batch_size, generator=g)
                for y in range(int(num_classes))]
    norms = torch.tensor([t[0].sum().item() for t in triggers])
    index = mad_anomaly_index(norms)
    infected = [y for y in range(int(num_classes)) if index[y] > threshold and norms[y] < norms.quantile(0.5)]
    info = {"norms": norms.tolist(), "anomaly_index": index.tolist(), "infected": infected}
    if not infected:
        return clone(model), info

    def add_triggers(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = max(1, int(round(stamp_fraction * x.shape[0])))
        which = torch.randint(0, len(infected), (k,), generator=gen)
        x = x.clone()
        for j, cls in enumerate(infected):
            rows = torch.nonzero(which == j).flatten()
            if rows.numel():
                mask, pattern = triggers[cls][0], triggers[cls][1]
                x[rows] = stamp(x[rows], mask, pattern)
        return x, y

    repaired = sgd_train(clone(model), images, labels, unlearn_steps, unlearn_lr, batch_size=batch_size,
                         generator=g, batch_transform=add_triggers, log_name="unlearn")
    return repaired, info


@register_defense
class NeuralCleanse(ModelDefense):
    """``defense: neural_cleanse``: reverse, detect and unlearn on the defender's benign labeled data."""

    name = "neural_cleanse"

    def __init__(self, reverse_steps: int = 300, unlearn_epochs: float = 1, unlearn_lr: float = 0.01,
                 stamp_fraction: float = 0.2, threshold: float = 2.0, batch_size: int = 64,
                 benign: str = "labeled") -> None:
        self.benign = check_benign(benign)
        check_positive(reverse_steps=reverse_steps, unlearn_epochs=unlearn_epochs, unlearn_lr=unlearn_lr,
                       threshold=threshold, batch_size=batch_size)
        self.reverse_steps, self.unlearn_epochs, self.unlearn_lr = int(reverse_steps), unlearn_epochs, float(unlearn_lr)
        self.stamp_fraction, self.threshold, self.batch_size = float(stamp_fraction), float(threshold), int(batch_size)
        self.info: dict[str, Any] = {}

    def repair(self, model: nn.Module, ctx: Any) -> nn.Module:
        model = to_defense_device(model, ctx)
        images, labels = context_labeled(ctx, self.benign)
        repaired, self.info = neural_cleanse(
            model, images, labels, ctx.split.num_classes, self.reverse_steps,
            epochs_to_steps(self.unlearn_epochs, len(labels), self.batch_size), self.unlearn_lr,
            self.stamp_fraction, self.threshold, self.batch_size, torch.Generator().manual_seed(context_seed(ctx)),
        )
        report(ctx, self.info)
        return repaired
