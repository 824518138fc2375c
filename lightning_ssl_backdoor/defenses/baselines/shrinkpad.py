"""``shrinkpad``: a test-time shrink-and-pad transform (Li, Zhai, Wu, Jiang, Li and Xia, "Rethinking
the Trigger of Backdoor Attack", arXiv 2004.04692, 2021; "ShrinkPad").

The paper observes that a backdoor keyed to a static patch stops firing when the trigger's
position or appearance changes at test time, and proposes to shrink every test image by a few
pixels (bilinear resize) and pad it back to its size with zeros. DBD (003) App. B.3 sets the
shrinking rate to 10% on every data set and pads "0-pixels at the bottom right of the shrunk
image", the default here (``position = "bottom_right"``); ``position = "random"`` draws the offset
per image, as in the original proposal. ``shrink`` is a fraction of the side (rounded to whole
pixels, at least one) or, when >= 1, a pixel count.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.defenses.base import ModelDefense, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import BehindTransform
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["ShrinkPad", "ShrinkPadModel", "ShrinkPadTransform", "shrink_pad"]

POSITIONS = ("bottom_right", "random")


def _pixels(shrink: float, size: int) -> int:
    px = int(shrink) if shrink >= 1 else max(1, int(round(float(shrink) * size)))
    if not 0 < px < size:
        raise ConfigError(f"shrink of {shrink} leaves no image at size {size}; use a rate in (0, 1) or fewer pixels.")
    return px


def shrink_pad(x: torch.Tensor, shrink: float = 0.1, position: str = "bottom_right",
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Resize a float ``[B, C, H, W]`` batch to ``(H - s, W - s)`` and zero-pad it back to ``H x W``."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ConfigError(f"ShrinkPad needs a float B x C x H x W batch, got {x.dtype} {tuple(x.shape)}.")
    if position not in POSITIONS:
        raise ConfigError(f"ShrinkPad position must be one of {list(POSITIONS)}, got {position!r}.")
    b, c, h, w = x.shape
    sh, sw = _pixels(shrink, h), _pixels(shrink, w)
    small = F.interpolate(x, size=(h - sh, w - sw), mode="bilinear", align_corners=False, antialias=True)
    out = torch.zeros_like(x)
    if position == "bottom_right":
        out[:, :, : h - sh, : w - sw] = small
        return out
    top = torch.randint(0, sh + 1, (b,), generator=generator).tolist()
    left = torch.randint(0, sw + 1, (b,), generator=generator).tolist()
    for i in range(b):
        out[i, :, top[i] : top[i] + h - sh, left[i] : left[i] + w - sw] = small[i]
    return out


class ShrinkPadTransform(nn.Module):
    """:func:`shrink_pad` as a module (applied to every test input)."""

    def __init__(self, shrink: float = 0.1, position: str = "bottom_right", seed: int = 0) -> None:
        super().__init__()
        if position not in POSITIONS or not shrink > 0:
            raise ConfigError(f"ShrinkPad needs shrink > 0 and position in {list(POSITIONS)}, got {shrink}, {position!r}.")
        self.shrink, self.position = float(shrink), position
        self.generator = torch.Generator().manual_seed(int(seed)) if position == "random" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return shrink_pad(x, self.shrink, self.position)
        return shrink_pad(x.cpu(), self.shrink, self.position, self.generator).to(x.device)


class ShrinkPadModel(BehindTransform):
    """``model(shrink_pad(x))``: the deployed model with the transform in front (``features`` too)."""

    def __init__(self, model: nn.Module, transform: ShrinkPadTransform) -> None:
        super().__init__(model, transform)


@register_defense
class ShrinkPad(ModelDefense):
    """``defense: shrinkpad``: ``repair(model, ctx)`` returns the model behind the test-time transform.

    The row's model is trained as usual; the runner's evaluation then sends every test input (clean
    and triggered) through :class:`ShrinkPadModel`, i.e. through the transform first."""

    name = "shrinkpad"

    def __init__(self, shrink: float = 0.1, position: str = "bottom_right") -> None:
        ShrinkPadTransform(shrink, position)  # validates
        self.shrink, self.position = float(shrink), position

    def transform(self, seed: int = 0) -> ShrinkPadTransform:
        return ShrinkPadTransform(self.shrink, self.position, seed)

    def repair(self, model: nn.Module, ctx: Any) -> nn.Module:
        return ShrinkPadModel(model, self.transform(int(getattr(ctx, "seed", 0) or 0)))
