"""``ft``: fine-tuning the trained (possibly backdoored) model on the defender's clean labeled set.

The plainest model-repair baseline (Liu et al., "Fine-Pruning", RAID 2018, Sec. 3; BI (001) App. B:
"we fine-tune the backdoored model using available benign labeled data ... adjust the learning rate
... to maintain the CA of the final fine-tuned model within 10% of the CA achieved without any
defense"; DePuD (000) Table V: "Finetuning (lr = 0.1)"). Algorithm: minimise
``E_(x,y) in D_l CE(f_theta(x), y)`` from the trained weights with SGD (momentum 0.9, weight decay
5e-4, cosine decay) and FixMatch's weak flip-and-shift augmentation. Defaults: ``lr = 0.01``
(NAD's fine-tuning rate; DePuD used 0.1, which the tables expose as a knob), ``epochs = 10`` (NAD's
teacher fine-tuning length), batch 64.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from lightning_ssl_backdoor.defenses.base import ModelDefense, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import (
    to_defense_device,
    check_benign,
    check_images_labels,
    check_positive,
    clone,
    context_labeled,
    context_seed,
    make_generator,
    sgd_train,
)

__all__ = ["FineTuning", "epochs_to_steps", "fine_tune"]


def epochs_to_steps(epochs: float, n: int, batch_size: int) -> int:
    """Optimiser steps of ``epochs`` passes over ``n`` samples in batches of ``batch_size`` (>= 1)."""
    return max(1, int(math.ceil(float(epochs) * n / max(1, min(int(batch_size), n)))))


def fine_tune(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 500,
    lr: float = 0.01,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    augment: bool = True,
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """A copy of ``model`` fine-tuned with cross entropy on ``(images, labels)`` for ``steps`` steps."""
    check_images_labels(images, labels, "fine-tuning images")
    return sgd_train(
        clone(model), images, labels, steps, lr, batch_size=batch_size, weight_decay=weight_decay,
        augment=augment, generator=make_generator(0, generator), log_name="finetune",
    )


@register_defense
class FineTuning(ModelDefense):
    """``defense: ft``: ``repair(model, ctx)`` fine-tunes on the defender's benign labeled data
    (``benign``: see :func:`~._common.context_labeled`)."""

    name = "ft"

    def __init__(self, lr: float = 0.01, epochs: float = 10, batch_size: int = 64, weight_decay: float = 5e-4,
                 augment: bool = True, benign: str = "labeled") -> None:
        check_positive(lr=lr, epochs=epochs, batch_size=batch_size)
        self.benign = check_benign(benign)
        self.lr, self.epochs, self.batch_size = float(lr), float(epochs), int(batch_size)
        self.weight_decay, self.augment = float(weight_decay), bool(augment)

    def repair(self, model: nn.Module, ctx: Any) -> nn.Module:
        model = to_defense_device(model, ctx)
        images, labels = context_labeled(ctx, self.benign)
        steps = epochs_to_steps(self.epochs, len(labels), self.batch_size)
        return fine_tune(model, images, labels, steps, self.lr, self.batch_size, self.weight_decay,
                         self.augment, torch.Generator().manual_seed(context_seed(ctx)))
