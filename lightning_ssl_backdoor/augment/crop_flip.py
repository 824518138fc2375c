"""Pal et al.'s "RCS0.5 + VFlip" (paper 002, Sec. 4.2, Fig. 1): random crop-and-resize of half the
image area followed by a vertical flip, on a float ``[B, C, H, W]`` batch with per-sample draws.

Fig. 1 of the paper ranks augmentations by how much they lower the ASR of a backdoored model when
applied to triggered test images; RCS0.5 + VFlip ("random cropping of 0.5 part of the image
combined with vertical flipping") lowers it most, and Algorithm 1 applies it to the labeled images
the teacher pseudo-labels. "VFlip" is a deterministic upside-down flip, so ``flip_prob`` defaults to
1.0 (every image is flipped); values below 1 flip each image with that probability.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["CropScaleVFlip"]


class CropScaleVFlip(nn.Module):
    """RCS<scale> + VFlip on a float ``[B, C, H, W]`` batch, every image with its own draws.

    Each image: a crop window of ``scale`` of the image area with aspect ratio log-uniform in
    ``ratio`` (clipped to the image), placed uniformly at random, resized back to ``H x W``
    (bilinear), then flipped upside down with probability ``flip_prob`` (1.0: Pal et al.'s VFlip,
    every image). One ``grid_sample`` call.
    """

    def __init__(self, scale: float = 0.5, ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_prob: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < scale <= 1.0:
            raise ConfigError(f"crop scale must be in (0, 1], got {scale}.")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"aspect ratio range must be positive and increasing, got {ratio}.")
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(f"flip_prob must be in [0, 1], got {flip_prob}.")
        self.scale, self.ratio, self.flip_prob = float(scale), (float(ratio[0]), float(ratio[1])), float(flip_prob)

    def theta(self, b: int, device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Affine matrices ``[B, 2, 3]`` in ``affine_grid``'s normalised coordinates (a negative
        ``theta[:, 1, 1]`` is a vertical flip)."""
        kw = dict(device=device, generator=generator)
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(lo + (hi - lo) * torch.rand(b, **kw))
        sx = torch.sqrt(self.scale * r).clamp(max=1.0)  # crop width / image width
        sy = (self.scale / sx).clamp(max=1.0)  # crop height / image height
        cx = (1.0 - sx) * (2.0 * torch.rand(b, **kw) - 1.0)
        cy = (1.0 - sy) * (2.0 * torch.rand(b, **kw) - 1.0)
        flip = torch.rand(b, **kw) < self.flip_prob
        sy = torch.where(flip, -sy, sy)
        zero = torch.zeros_like(sx)
        return torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if generator is not None and generator.device != x.device:
            theta = self.theta(x.shape[0], generator.device, generator).to(x.device)
        else:
            theta = self.theta(x.shape[0], x.device, generator)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
