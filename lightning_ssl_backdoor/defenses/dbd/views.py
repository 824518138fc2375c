"""SimCLR views on the device, drawn per sample (Chen et al. 2020, App. A; DBD App. B.3).

:class:`SimCLRAugment` maps a float ``[B, C, H, W]`` batch in [0, 1] to one random view of every
image, each image drawing its own parameters:

1. random resized crop (area fraction ``scale`` = 0.2-1 of the image, aspect ratio 3/4-4/3,
   bilinear resize back to ``H x W``) and horizontal flip (p 0.5), together in ONE
   ``affine_grid`` / ``grid_sample`` call;
2. colour jitter with probability 0.8: brightness, contrast, saturation 0.4 (factors drawn from
   ``[0.6, 1.4]``) and hue 0.1 (a shift of up to a tenth of the hue circle), applied in a random
   order drawn per image, like ``ColorJitter``;
3. grayscale with probability 0.2 (ITU-R 601 luma copied to every channel);
4. Gaussian blur with probability 0.5, sigma in [0.1, 2.0], an odd kernel of about 10% of the
   image side (at least 3), separable, per-image kernels in one grouped convolution.

One difference from the PIL pipeline: when a drawn crop is wider or taller than the image, the
PIL code draws again (10 times); here the side is clipped to the image, which slightly favours
full-width crops at extreme aspect ratios. 1-channel images skip saturation, hue and grayscale.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.augment import ops
from lightning_ssl_backdoor.errors import ConfigError


def _uniform(n: int, lo: float, hi: float, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)


def _coin(n: int, p: float, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def resized_crop_matrices(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float] = (0.2, 1.0),
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    flip_p: float = 0.5,
    device: torch.device | str = "cpu",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``[n, 2, 3]`` ``affine_grid`` matrices (normalised coordinates, ``align_corners=False``) that
    crop a random box of area ``U(scale) * H * W`` and aspect ratio ``exp(U(log ratio))`` at a
    uniform position and stretch it to the full image, mirrored left-right with prob. ``flip_p``."""
    area = _uniform(n, scale[0], scale[1], device, generator) * height * width
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), device, generator)
    r = torch.exp(log_r)
    fw = (torch.sqrt(area * r) / width).clamp(max=1.0)  # crop width as a fraction of the image
    fh = (torch.sqrt(area / r) / height).clamp(max=1.0)
    x0 = torch.rand(n, device=device, generator=generator) * (1.0 - fw)
    y0 = torch.rand(n, device=device, generator=generator) * (1.0 - fh)
    sign = torch.where(_coin(n, flip_p, device, generator), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = fw * sign
    theta[:, 1, 1] = fh
    theta[:, 0, 2] = 2.0 * (x0 + fw / 2.0) - 1.0
    theta[:, 1, 2] = 2.0 * (y0 + fh / 2.0) - 1.0
    return theta


def apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample every image with its own ``[2, 3]`` normalised matrix (bilinear, border padding)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp_(0.0, 1.0)


def hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each RGB image by ``shift`` (fraction of the hue circle, ``[B]``)."""
    if x.shape[1] != 3:
        return x.clone()
    from kornia.enhance import adjust_hue  # lazy: kornia takes seconds to import; only the hue jitter needs it

    return adjust_hue(x, (2.0 * math.pi) * shift.to(x.dtype)).clamp_(0.0, 1.0)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels ``[B, size]`` (``size`` odd), one per ``sigma``."""
    t = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2.0
    k = torch.exp(-(t.view(1, -1) ** 2) / (2.0 * sigma.view(-1, 1) ** 2))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image, reflect padding; a grouped convolution."""
    b, c, h, w = x.shape
    if size % 2 != 1 or size < 1:
        raise ConfigError(f"the blur kernel size must be a positive odd number, got {size}.")
    if size == 1:
        return x.clone()
    k = gaussian_kernels(sigma.to(x.dtype), size).repeat_interleave(c, dim=0)  # [B*C, size]
    p = size // 2
    mode = "reflect" if p < min(h, w) else "replicate"
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (p, p, 0, 0), mode=mode), k.view(b * c, 1, 1, size), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, p, p), mode=mode), k.view(b * c, 1, size, 1), groups=b * c)
    return y.reshape(b, c, h, w).clamp_(0.0, 1.0)


class SimCLRAugment(nn.Module):
    """One SimCLR view per image, every parameter drawn per sample (see the module docstring).

    Args:
        scale, ratio: random resized crop ranges (area fraction, aspect ratio).
        flip_p: horizontal flip probability.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths; ``jitter_p`` its probability.
        gray_p: grayscale probability.
        blur_p, blur_sigma: Gaussian blur probability and sigma range; ``blur_fraction`` the kernel
            size as a fraction of the image side (rounded to an odd number, at least 3).

    ``forward(x, generator=None)`` returns a batch of the input's shape; draws come from the global
    RNG or ``generator`` (on ``x.device``).
    """

    def __init__(
        self,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        blur_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        scale, ratio, jitter, blur_sigma = (tuple(float(v) for v in s) for s in (scale, ratio, jitter, blur_sigma))
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(f"SimCLR crop scale must be two numbers with 0 < low <= high <= 1, got {scale}.")
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"SimCLR crop ratio must be two positive numbers low <= high, got {ratio}.")
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ConfigError(
                f"SimCLR jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, got {jitter}."
            )
        if len(blur_sigma) != 2 or not 0.0 < blur_sigma[0] <= blur_sigma[1]:
            raise ConfigError(f"SimCLR blur_sigma must be two positive numbers low <= high, got {blur_sigma}.")
        for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p), ("gray_p", gray_p), ("blur_p", blur_p)):
            if not 0.0 <= float(p) <= 1.0:
                raise ConfigError(f"SimCLR {name} must be a probability in [0, 1], got {p}.")
        if not 0.0 <= float(blur_fraction) <= 1.0:
            raise ConfigError(f"SimCLR blur_fraction must be in [0, 1], got {blur_fraction}.")
        self.scale, self.ratio, self.jitter, self.blur_sigma = scale, ratio, jitter, blur_sigma
        self.flip_p, self.jitter_p = float(flip_p), float(jitter_p)
        self.gray_p, self.blur_p = float(gray_p), float(blur_p)
        self.blur_fraction = float(blur_fraction)

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, ratio={tuple(round(r, 3) for r in self.ratio)}, flip_p={self.flip_p}, "
                f"jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, blur_p={self.blur_p}")

    def blur_size(self, side: int) -> int:
        """Odd kernel size of about ``blur_fraction * side``, at least 3."""
        k = int(self.blur_fraction * side)
        return max(3, k + 1 if k % 2 == 0 else k)

    def color_jitter(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Brightness / contrast / saturation / hue with factors and order drawn per image, applied
        to the images that drew the jitter (probability ``jitter_p``)."""
        b, dev = x.shape[0], x.device
        apply = _coin(b, self.jitter_p, dev, generator)
        bri, con, sat, hue = self.jitter
        factors = [
            _uniform(b, max(0.0, 1.0 - bri), 1.0 + bri, dev, generator),
            _uniform(b, max(0.0, 1.0 - con), 1.0 + con, dev, generator),
            _uniform(b, max(0.0, 1.0 - sat), 1.0 + sat, dev, generator),
            _uniform(b, -hue, hue, dev, generator),
        ]
        fns = [ops.brightness, ops.contrast, ops.color, hue_shift]
        order = torch.argsort(torch.rand(b, 4, device=dev, generator=generator), dim=1)
        out = x.clone()
        for slot in range(4):
            for op in range(4):
                rows = torch.nonzero(apply & (order[:, slot] == op)).flatten()
                if rows.numel():
                    out[rows] = fns[op](out[rows], factors[op][rows])
        return out

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        ops.check_batch(x)
        b, c, h, w = x.shape
        dev = x.device
        theta = resized_crop_matrices(b, h, w, self.scale, self.ratio, self.flip_p, dev, generator)
        out = apply_affine(x, theta)
        out = self.color_jitter(out, generator)
        gray = _coin(b, self.gray_p, dev, generator)
        if c == 3:
            rows = torch.nonzero(gray).flatten()
            if rows.numel():
                out[rows] = ops.grayscale(out[rows]).expand(-1, 3, -1, -1)
        blur = _coin(b, self.blur_p, dev, generator)
        sigma = _uniform(b, self.blur_sigma[0], self.blur_sigma[1], dev, generator)
        rows = torch.nonzero(blur).flatten()
        if rows.numel():
            out[rows] = gaussian_blur(out[rows], sigma[rows], self.blur_size(min(h, w)))
        return out
