"""``abl``: anti-backdoor learning (Li, Lyu, Koren, Lyu, Li and Ma, "Anti-Backdoor Learning:
Training Clean Models on Poisoned Data", NeurIPS 2021), adapted to SSL as a model repair.

The paper's two observations: backdoored examples are learned much faster than clean ones (their
training loss drops first and lowest), and the backdoor is tied to its target class. Algorithm:
(1) isolation: train with the local gradient ascent loss ``L_LGA = sign(l - gamma) * l`` (Eq. 3,
``gamma = 0.5``) for ``T_te = 20`` epochs and isolate the ``p = 1%`` training examples with the
lowest loss, ``D_b``; (2) unlearning: ``min_theta E_(D_c) l - E_(D_b) l`` (Eq. 5), i.e. keep
learning the rest while ascending the loss on the isolated set (the paper's unlearning lr: 5e-4).

SSL adaptation (BI (001) compares with ABL on SSL but does not describe its port; App. C only
notes that scarce labels make ABL "difficult to ... detect poisoned data"). The poisons sit in the
UNLABELED set, so isolation scores each unlabeled image by its loss against the trained model's own
pseudo-label, ``l(x) = -log max_k p_k(x)``: a backdoored model is most confident on triggered
images, which is the paper's low-loss signal without labels. ``D_b`` = the ``isolation_ratio``
(default 1%) lowest-loss unlabeled images with their pseudo-labels; ``D_c`` = the defender's
clean labeled set. Unlearning then runs Eq. 5 for ``unlearn_epochs`` (default 5, the paper's
unlearning length) at ``lr = 5e-4``. With labels (a poison-label setting), isolation uses them.
In a poison-label setting (labels on the poisons) the paper's isolation stage is
:func:`lga_train` from a fresh model, then :func:`isolation_losses` with the labels.
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
    context_unlabeled,
    make_generator,
    predict_logits,
    report,
    sgd_train,
)
from lightning_ssl_backdoor.defenses.baselines.ft import epochs_to_steps
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["AntiBackdoorLearning", "abl_isolate", "abl_unlearn", "isolation_losses", "lga_loss", "lga_train"]


def lga_loss(losses: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """``mean(sign(l - gamma) * l)`` over per-sample losses (ABL Eq. 3)."""
    return (torch.sign(losses - gamma) * losses).mean()


def lga_train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, lr: float = 0.1,
              gamma: float = 0.5, batch_size: int = 64, generator: Optional[torch.Generator] = None) -> nn.Module:
    """ABL's isolation stage: a copy of ``model`` trained ``steps`` steps with the LGA loss (Eq. 3)."""

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lga_loss(F.cross_entropy(m(x), y, reduction="none"), gamma)

    return sgd_train(clone(model), images, labels, steps, lr, batch_size=batch_size,
                     generator=make_generator(0, generator), loss_fn=loss_fn, cosine=False, log_name="isolate")


def isolation_losses(model: nn.Module, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample CE ``[N]`` against ``labels`` (or the model's own argmax) and the labels used."""
    logits = predict_logits(model, images)
    used = logits.argmax(1) if labels is None else labels
    return F.cross_entropy(logits, used, reduction="none"), used


def abl_isolate(losses: torch.Tensor, ratio: float = 0.01) -> torch.Tensor:
    """Bool mask of the ``max(1, round(ratio * N))`` lowest-loss samples (ties: lower index first)."""
    if not 0.0 < float(ratio) < 1.0:
        raise ConfigError(f"isolation_ratio must lie in (0, 1), got {ratio}.")
    k = max(1, int(round(float(ratio) * losses.numel())))
    mask = torch.zeros(losses.numel(), dtype=torch.bool)
    mask[torch.sort(losses, stable=True).indices[:k]] = True
    return mask


def abl_unlearn(
    model: nn.Module,
    clean_images: torch.Tensor,
    clean_labels: torch.Tensor,
    isolated_images: torch.Tensor,
    isolated_labels: torch.Tensor,
    steps: int = 100,
    lr: float = 5e-4,
    batch_size: int = 64,
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """A copy of ``model`` trained with ``CE(clean batch) - CE(isolated batch)`` (ABL Eq. 5)."""
    check_images_labels(clean_images, clean_labels, "ABL clean images")
    check_images_labels(isolated_images, isolated_labels, "ABL isolated images")
    g = make_generator(0, generator)
    device = next(model.parameters()).device
    nb = min(int(batch_size), isolated_images.shape[0])

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(0, isolated_images.shape[0], (nb,), generator=g)
        xb = as_float(isolated_images[idx]).to(device)
        return F.cross_entropy(m(x), y) - F.cross_entropy(m(xb), isolated_labels[idx].to(device))

    return sgd_train(clone(model), clean_images, clean_labels, steps, lr, batch_size=batch_size, generator=g,
                     loss_fn=loss_fn, cosine=False, log_name="unlearn")


@register_defense
class AntiBackdoorLearning(ModelDefense):
    """``defense: abl``: isolate the most confident unlabeled images, then unlearn them (Eq. 5)."""

    name = "abl"

    def __init__(self, isolation_ratio: float = 0.01, lr: float = 5e-4, unlearn_epochs: float = 5,
                 batch_size: int = 64, benign: str = "labeled") -> None:
        check_positive(isolation_ratio=isolation_ratio, lr=lr, unlearn_epochs=unlearn_epochs, batch_size=batch_size)
        self.benign = check_benign(benign)
        self.ratio, self.lr, self.epochs, self.batch_size = float(isolation_ratio), float(lr), unlearn_epochs, int(batch_size)
        self.info: dict[str, Any] = {}

    def repair(self, model: nn.Module, ctx: Any) -> nn.Module:
        model = to_defense_device(model, ctx)
        images, labels = context_labeled(ctx, self.benign)
        pool = context_unlabeled(ctx)
        losses, pseudo = isolation_losses(model, pool)
        isolated = abl_isolate(losses, self.ratio)
        self.info = {"isolated": int(isolated.sum()), "max_isolated_loss": float(losses[isolated].max())}
        mask = getattr(ctx.split, "unlabeled_poison_mask", None)
        if mask is not None and mask.numel() == isolated.numel():
            self.info["isolated_poisons"] = int((mask.cpu().bool() & isolated).sum())
        report(ctx, self.info)
        steps = epochs_to_steps(self.epochs, len(labels), self.batch_size)
        return abl_unlearn(model, images, labels, pool[isolated], pseudo[isolated], steps, self.lr, self.batch_size,
                           torch.Generator().manual_seed(context_seed(ctx)))
