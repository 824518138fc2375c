"""Batched Gaussian filter (the "filter" step of the Backdoor Invalidator, paper 001).

:class:`GaussianFilter` blurs a float batch ``[B, C, H, W]`` (or one image ``[C, H, W]``) with an
isotropic Gaussian of standard deviation ``radius`` (Pillow's ``ImageFilter.GaussianBlur(radius)``
convention, which the BI authors used with radius 0.75; their appendix says 1). The kernel is
truncated at ``ceil(truncate * radius)`` pixels on each side and normalised to sum 1
(``kornia.filters.get_gaussian_kernel1d``); borders repeat the edge pixel (as Pillow does). The 2-D
filter is separable: ``kornia.filters.filter2d_separable`` with ``border_type="replicate"``, one
depthwise correlation along rows, one along columns, on whatever device and dtype the input has.
``radius == 0`` is the identity.
"""

from __future__ import annotations

import math

import torch
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from torch import nn

from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["GaussianFilter", "gaussian_kernel1d"]


def gaussian_kernel1d(radius: float, truncate: float = 3.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian ``exp(-t^2 / (2 radius^2))`` for ``t = -h..h``, ``h = ceil(truncate * radius)``.

    ``radius == 0`` gives the one-tap kernel ``[1]``.
    """
    if not radius >= 0 or math.isinf(radius):
        raise ConfigError(f"Gaussian filter radius must be a finite number >= 0, got {radius}.")
    if not truncate > 0:
        raise ConfigError(f"Gaussian filter truncate must be positive, got {truncate}.")
    if radius == 0:
        return torch.ones(1, dtype=dtype)
    half = int(math.ceil(truncate * radius))
    return get_gaussian_kernel1d(2 * half + 1, float(radius), dtype=dtype)[0]


class GaussianFilter(nn.Module):
    """Gaussian blur of float images in [0, 1] (any device, any float dtype); see the module doc.

    Args:
        radius: standard deviation in pixels (default 1; 0 disables the filter).
        truncate: kernel half-width in standard deviations (default 3).
    """

    def __init__(self, radius: float = 1.0, truncate: float = 3.0) -> None:
        super().__init__()
        self.radius, self.truncate = float(radius), float(truncate)
        self.register_buffer("kernel", gaussian_kernel1d(self.radius, self.truncate).float(), persistent=False)

    @property
    def half_width(self) -> int:
        return (len(self.kernel) - 1) // 2

    def extra_repr(self) -> str:
        return f"radius={self.radius}, truncate={self.truncate}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise ConfigError(f"GaussianFilter expects float images in [0, 1], got dtype {x.dtype}.")
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ConfigError(f"GaussianFilter expects [B, C, H, W] or [C, H, W] images, got shape {tuple(x.shape)}.")
        h = self.half_width
        if h == 0:
            return x[0] if single else x
        k = self.kernel.to(device=x.device, dtype=x.dtype).view(1, -1)
        y = filter2d_separable(x, k, k, border_type="replicate")
        return y[0] if single else y
