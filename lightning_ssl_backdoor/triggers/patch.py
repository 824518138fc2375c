"""Patch triggers: a small pattern pasted (pixels replaced) at one or more corners.

Factories for the patches the papers use:

- :func:`badnets_patch`: BadNets (Gu et al.) squares of any size, white / gray / RGB / checkerboard
  at any corner with a margin: DBD's 2x2 random-colour patch (003, Sec. 5.2), Pal et al.'s 5x5
  gray-scale or RGB patch in the lower-right corner (002, Sec. 5), Yan et al.'s clean-label patches.
- :func:`four_corner_patch`: CL-BadNets of BI (001, App. B.2.3): four squares at intensity 255, one
  at each corner.
- :func:`deneb_patch`: Yan et al. (000, Sec. VI-B): a random 4x4 pattern resized bilinearly to
  8x8, pasted bottom-right with a 5 pixel margin, i.e. rows/cols ``H-8-5 .. H-5-1``.

Patterns are images, so they are rounded to the 1/255 grid when built: a pasted patch lands exactly
on uint8 values and a perturbation bound ``eps`` measured after quantisation stays exact.

Grey (1-channel) images: a colour pattern (``"rgb"``, DeNeB's random pattern) is drawn in colour
from the same seed and pasted as its luma (ITU-R BT.601: ``0.299 R + 0.587 G + 0.114 B``), rounded
to the 1/255 grid, so the grey trigger is the grey rendering of the RGB one; a 3-channel pattern
built for RGB images and applied to grey ones is converted the same way.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError, DataFormatError
from lightning_ssl_backdoor.triggers.base import Trigger, match_channels, on_grid, register_trigger

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
COLORS = ("white", "black", "gray", "rgb", "checkerboard")


def corner_origin(corner: str, margin: int, h: int, w: int, H: int, W: int) -> tuple[int, int]:
    """Top-left pixel (row, col) of an ``h x w`` patch at ``corner`` of an ``H x W`` image."""
    top = margin if corner.startswith("top") else H - margin - h
    left = margin if corner.endswith("left") else W - margin - w
    return top, left


@register_trigger
class PatchTrigger(Trigger):
    """Replace the pixels under ``pattern`` (``[Cp, h, w]`` in [0, 1]) at each of ``corners``.

    ``margin`` pixels separate the patch from the image border. A 1-channel pattern is repeated over
    the image channels; a 3-channel pattern on 1-channel images is converted to luma.
    """

    name = "patch"

    def __init__(
        self,
        pattern: torch.Tensor,
        corners: Sequence[str] = ("bottom_right",),
        margin: int = 1,
        style: str = "custom",
    ) -> None:
        super().__init__()
        pattern = torch.as_tensor(pattern, dtype=torch.float32)
        if pattern.ndim == 2:
            pattern = pattern.unsqueeze(0)
        if pattern.ndim != 3 or pattern.shape[0] not in (1, 3) or min(pattern.shape[1:]) < 1:
            raise ConfigError(
                f"a patch pattern must have shape [1 or 3, h, w], got {tuple(pattern.shape)}."
            )
        if isinstance(corners, str):
            corners = [corners]
        corners = [str(c) for c in corners]
        bad = [c for c in corners if c not in CORNERS]
        if bad or not corners:
            raise ConfigError(f"patch corners must be among {list(CORNERS)}, got {corners}.")
        if int(margin) != margin or margin < 0:
            raise ConfigError(f"patch margin must be a non-negative integer, got {margin!r}.")
        self.register_buffer("pattern", on_grid(pattern))
        self.corners = corners
        self.margin = int(margin)
        self.style = str(style)

    def params(self) -> Dict[str, Any]:
        return {"corners": list(self.corners), "margin": self.margin, "style": self.style}

    def arrays(self) -> Dict[str, torch.Tensor]:
        return {"pattern": self.pattern.detach().cpu()}

    def mask(self, shape: Sequence[int], device=None) -> torch.Tensor:
        """Bool ``[H, W]`` mask of the pixels this trigger replaces on ``H x W`` images."""
        H, W = int(shape[-2]), int(shape[-1])
        m = torch.zeros(H, W, dtype=torch.bool, device=device)
        h, w = self.pattern.shape[1:]
        for corner in self.corners:
            top, left = self._origin(corner, H, W)
            m[top : top + h, left : left + w] = True
        return m

    def _origin(self, corner: str, H: int, W: int) -> tuple[int, int]:
        h, w = self.pattern.shape[1:]
        if h + self.margin > H or w + self.margin > W:
            raise DataFormatError(
                f"a {h}x{w} patch with margin {self.margin} does not fit {H}x{W} images; use a "
                "smaller patch or margin."
            )
        return corner_origin(corner, self.margin, h, w, H, W)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        p = self.pattern.to(device=x.device, dtype=x.dtype)
        if p.shape[0] != x.shape[1]:
            p = on_grid(match_channels(p, x.shape[1]))  # colour on grey: the luma, on the uint8 grid
        h, w = p.shape[1:]
        out = x.clone()
        for corner in self.corners:
            top, left = self._origin(corner, H, W)
            out[:, :, top : top + h, left : left + w] = p
        return out


def grey_if(pattern: torch.Tensor, channels: int) -> torch.Tensor:
    """A ``[3, h, w]`` colour pattern as it goes on ``channels``-channel images: itself for RGB, its
    luma rounded to the 1/255 grid for grey ones."""
    pattern = on_grid(pattern)  # as the RGB trigger stores it, so both paste the same grey patch
    return on_grid(match_channels(pattern, 1)) if channels == 1 else pattern


def _pattern(size: int, color: str, channels: int, generator: torch.Generator) -> torch.Tensor:
    if color == "white":
        return torch.ones(1, size, size)
    if color == "black":
        return torch.zeros(1, size, size)
    if color == "gray":
        return torch.rand(1, size, size, generator=generator)
    if color == "rgb":
        return grey_if(torch.rand(3, size, size, generator=generator), channels)
    if color == "checkerboard":
        r = torch.arange(size)
        return ((r.view(-1, 1) + r.view(1, -1)) % 2 == 0).float().unsqueeze(0)
    raise ConfigError(f"patch color must be one of {list(COLORS)}, got {color!r}.")


def badnets_patch(
    size: int = 3,
    color: str = "white",
    corner: str = "bottom_right",
    margin: int = 1,
    channels: int = 3,
    seed: int = 0,
) -> PatchTrigger:
    """BadNets square of ``size`` x ``size`` pixels at ``corner`` (``margin`` px from the border).

    ``color``: "white" / "black" (constant), "gray" (seeded random gray level per pixel, same on
    every channel), "rgb" (seeded random colour per pixel and channel: DBD's "random-colour" patch;
    on grey images, ``channels=1``, the luma of the same colour pattern), "checkerboard"
    (alternating 0/1).
    """
    if int(size) != size or size < 1:
        raise ConfigError(f"patch size must be a positive integer, got {size!r}.")
    g = torch.Generator().manual_seed(int(seed))
    pattern = _pattern(int(size), str(color), int(channels), g)
    return PatchTrigger(pattern, corners=[corner], margin=margin, style=f"badnets-{color}")


def four_corner_patch(size: int = 3, margin: int = 1, value: float = 1.0) -> PatchTrigger:
    """CL-BadNets (BI, 001 App. B.2.3): four ``size`` x ``size`` squares of intensity ``value``
    (255 on the uint8 scale by default), one at each corner, ``margin`` px from the border."""
    if int(size) != size or size < 1:
        raise ConfigError(f"patch size must be a positive integer, got {size!r}.")
    pattern = torch.full((1, int(size), int(size)), float(value))
    return PatchTrigger(pattern, corners=list(CORNERS), margin=margin, style="four-corner")


def deneb_patch(
    channels: int = 3,
    base: int = 4,
    size: int = 8,
    margin: int = 5,
    seed: int = 0,
) -> PatchTrigger:
    """Yan et al.'s trigger: a seeded random ``base x base`` pattern (uniform in [0, 1] per pixel and
    channel) resized bilinearly to ``size x size`` and pasted bottom-right with ``margin`` px, i.e.
    rows and columns ``H - size - margin .. H - margin - 1`` (their code: ``H-8-5 .. H-5-1``).

    The pattern is always drawn in colour; for grey images (``channels=1``) it is stored as its luma
    (rounded to the 1/255 grid), the same trigger rendered in grey."""
    g = torch.Generator().manual_seed(int(seed))
    small = torch.rand(1, 3, int(base), int(base), generator=g)
    big = F.interpolate(small, size=(int(size), int(size)), mode="bilinear", align_corners=False)[0]
    return PatchTrigger(grey_if(big, int(channels)), corners=["bottom_right"], margin=margin, style="deneb")


def patch_from_config(
    channels: int,
    size: int = 3,
    color: str = "white",
    corner: str = "bottom_right",
    margin: int = 1,
    seed: int = 0,
    pattern: Optional[Sequence] = None,
) -> PatchTrigger:
    """Config entry point of ``{"name": "patch"}``: an explicit ``pattern`` or a BadNets square."""
    if pattern is not None:
        return PatchTrigger(torch.as_tensor(pattern, dtype=torch.float32), [corner], margin)
    return badnets_patch(size, color, corner, margin, channels, seed)
