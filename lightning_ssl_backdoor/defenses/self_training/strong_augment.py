"""``defense: strong_augment``: the row's model behind Pal et al.'s RCS0.5 + VFlip at test time.

Pal et al. (paper 002, Sec. 4.2, Fig. 1) train a model on the poisoned labeled data as usual and
apply each candidate augmentation to every (triggered) test image; RCS0.5 + VFlip lowers the ASR
most, at a large cost in standard accuracy ("the SA reduces to about 20%", Sec. 5.2.1). This is that
measurement as a row ("strong augmentation alone, without self-training"): a
:class:`~lightning_ssl_backdoor.defenses.base.ModelDefense` whose repaired model applies
:class:`~lightning_ssl_backdoor.augment.CropScaleVFlip` (``crop_scale`` 0.5, ``vflip_prob`` 1.0) to
every clean and triggered test input before the trained model, with per-image draws from a
generator seeded by the row's seed. The training itself is the row's (e.g. ``supervised``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_ssl_backdoor.augment import CropScaleVFlip
from lightning_ssl_backdoor.defenses.base import ModelDefense, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import BehindTransform

__all__ = ["StrongAugment", "StrongAugmentModel"]


class StrongAugmentModel(BehindTransform):
    """``model(T(x))`` with T = RCS<scale> + VFlip, drawn per image from a seeded CPU generator."""

    def __init__(self, model: nn.Module, transform: CropScaleVFlip, seed: int = 0) -> None:
        super().__init__(model, transform)
        self.generator = torch.Generator().manual_seed(int(seed))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x, generator=self.generator)


@register_defense
class StrongAugment(ModelDefense):
    """``defense: strong_augment``: ``repair`` puts the trained model behind T (see the module doc)."""

    name = "strong_augment"

    def __init__(self, crop_scale: float = 0.5, vflip_prob: float = 1.0) -> None:
        CropScaleVFlip(scale=crop_scale, flip_prob=vflip_prob)  # validates
        self.crop_scale, self.vflip_prob = float(crop_scale), float(vflip_prob)

    def repair(self, model: nn.Module, ctx: Any) -> nn.Module:
        t = CropScaleVFlip(scale=self.crop_scale, flip_prob=self.vflip_prob)
        return StrongAugmentModel(model, t, int(getattr(ctx, "seed", 0) or 0))
