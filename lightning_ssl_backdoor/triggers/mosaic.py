"""Mosaic trigger (Shejwalkar et al., ICCV 2023, as used by BI, 001 App. B.2.3).

A full-image grid of 1-pixel dots: a dot on every pixel whose row and column are multiples of
``gap + 1`` (shifted by ``offset``), i.e. ``gap`` clean pixels between neighbouring dots (BI: gap 1
on 32x32 images, 2 on 96x96). Each dot adds ``intensity`` (20-30 on the 0-255 scale in the paper;
default 25/255) to every channel; the result is clipped, so bright pixels saturate at 1 instead of
wrapping around as uint8 arithmetic would.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.triggers.base import Trigger, register_trigger


@register_trigger
class MosaicTrigger(Trigger):
    name = "mosaic"

    def __init__(self, gap: int = 1, intensity: float = 25.0 / 255.0, offset: int = 0) -> None:
        super().__init__()
        if int(gap) != gap or gap < 0:
            raise ConfigError(f"mosaic gap must be a non-negative integer, got {gap!r}.")
        if int(offset) != offset or offset < 0:
            raise ConfigError(f"mosaic offset must be a non-negative integer, got {offset!r}.")
        if not -1.0 <= float(intensity) <= 1.0:
            raise ConfigError(f"mosaic intensity is on the [0, 1] pixel scale (e.g. 25/255), got {intensity}.")
        self.gap, self.offset, self.intensity = int(gap), int(offset), float(intensity)

    def params(self) -> Dict[str, Any]:
        return {"gap": self.gap, "intensity": self.intensity, "offset": self.offset}

    def mask(self, H: int, W: int, device=None) -> torch.Tensor:
        """Bool ``[H, W]``: the dot positions."""
        step = self.gap + 1
        r = (torch.arange(H, device=device) - self.offset) % step == 0
        c = (torch.arange(W, device=device) - self.offset) % step == 0
        r &= torch.arange(H, device=device) >= self.offset
        c &= torch.arange(W, device=device) >= self.offset
        return r.view(-1, 1) & c.view(1, -1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask(x.shape[-2], x.shape[-1], x.device).to(x.dtype)
        return x + self.intensity * m
