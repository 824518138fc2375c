"""The optimiser every SSL algorithm shares: SGD with momentum / Nesterov, weight decay that skips
BatchNorm and bias parameters, and FixMatch's cosine schedule over ``max_steps`` (Sohn et al. 2020,
Sec. 3.2: ``eta cos(7 pi k / 16 K)``), after an optional linear warm-up.

:class:`SGDCosine` is a mixin of :class:`~lightning_ssl_backdoor.ssl.base.SSLModule`; it reads the
hyperparameters ``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``schedule``, ``warmup_steps``
and ``scale_lr_with_world_size``, and the backbone ``self.model``.
"""

from __future__ import annotations

import math

import torch

from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["SGDCosine", "cosine_factor"]


def cosine_factor(step: int, total: int, warmup: int = 0, cosine: bool = True) -> float:
    """The learning-rate multiplier at ``step``: ``(step + 1) / warmup`` during the warm-up, then
    ``cos(7 pi (k - warmup) / (16 (K - warmup)))`` (FixMatch) or 1 for a constant schedule."""
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    return math.cos(7.0 * math.pi * (step - warmup) / (16.0 * max(1, total - warmup)))


class SGDCosine:
    """``configure_optimizers`` of the SSL modules: two SGD parameter groups (weights with decay,
    BatchNorm / bias parameters without) and a per-step :class:`~torch.optim.lr_scheduler.LambdaLR`
    of :func:`cosine_factor`."""

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        opt = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr * self.lr_world_factor(),
            momentum=self.hparams.momentum,
            nesterov=self.hparams.nesterov and self.hparams.momentum > 0,
        )
        total = self.total_steps()
        warm = int(self.hparams.warmup_steps)
        cosine = self.hparams.schedule == "cosine"
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_factor(step, total, warm, cosine))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lr_world_factor(self) -> int:
        """The world size with ``scale_lr_with_world_size`` (linear scaling rule), else 1."""
        if not self.hparams.get("scale_lr_with_world_size", False) or self._trainer is None:
            return 1
        return int(self.trainer.world_size)

    def total_steps(self) -> int:
        """``trainer.max_steps`` (the schedule's K); 1 before the module is attached to a Trainer."""
        if self._trainer is None:
            return 1
        ms = self.trainer.max_steps
        if ms is None or ms < 0:
            raise ConfigError("SSL training is iteration-based: set trainer.max_steps to a positive number.")
        return int(ms)
