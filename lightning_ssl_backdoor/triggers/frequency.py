"""Frequency trigger "Freq" (CTRL, Li et al. 2023; used by BI, 001 Sec. 3.1 and App. B.2.3).

RGB -> YUV (BT.601 analogue: Y = .299 R + .587 G + .114 B, U = .492 (B - Y), V = .877 (R - Y)),
an orthonormal 2-D DCT-II over the whole image of each chosen channel, ``magnitude`` added at
each chosen coefficient (CTRL: 100 on the 0-255 scale, i.e. 100/255 here, at (15, 15) and (31, 31)
of U and V), inverse DCT, back to RGB, clip.

Positions are given on a ``reference_size`` grid (32, CTRL's CIFAR setting) and mapped to an
``H x W`` image by ``round((p + 1) * H / reference_size) - 1`` clamped to ``[0, H - 1]`` (columns
likewise with ``W``), so (15, 15) and (31, 31) stay the mid and the highest frequency on any size:
(7, 7) and (15, 15) on 16x16, (3, 3) and (7, 7) on 8x8.

Grey (1-channel) images have no chroma, so there the trigger perturbs the luma: the single
channel *is* Y, and ``magnitude`` goes on its DCT at the same coefficients (whatever
``yuv_channels`` says). This departs from CTRL on purpose: a grey image stored as three identical
RGB channels and bumped in U and V turns colourful, and colour alone then separates every poison
from every clean grey image, a shortcut no natural image offers.

All transforms run in float64 and are exact inverses, so before clipping the DCT of the result
differs from the DCT of the input only at the chosen coefficients of the chosen channels.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import torch

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.triggers.base import Trigger, register_trigger

_RGB2YUV = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.492 * 0.299, -0.492 * 0.587, 0.492 * (1 - 0.114)],
        [0.877 * (1 - 0.299), -0.877 * 0.587, -0.877 * 0.114],
    ],
    dtype=torch.float64,
)
_YUV2RGB = torch.linalg.inv(_RGB2YUV)


def dct_matrix(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (``D @ D.T = I``): ``X = D x`` for a length-``n`` signal."""
    k = torch.arange(n, device=device, dtype=dtype).view(-1, 1)
    i = torch.arange(n, device=device, dtype=dtype).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = d[0] / math.sqrt(2.0)
    return d


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT over the last two dims."""
    dh = dct_matrix(x.shape[-2], x.device, x.dtype)
    dw = dct_matrix(x.shape[-1], x.device, x.dtype)
    return dh @ x @ dw.T


def idct2(X: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2`."""
    dh = dct_matrix(X.shape[-2], X.device, X.dtype)
    dw = dct_matrix(X.shape[-1], X.device, X.dtype)
    return dh.T @ X @ dw


def rgb_to_yuv(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB2YUV.to(x.device, x.dtype), x)


def yuv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _YUV2RGB.to(x.device, x.dtype), x)


def scale_position(p: int, size: int, reference_size: int) -> int:
    """Map coefficient index ``p`` on a ``reference_size`` grid to a ``size`` grid."""
    return min(max(int(round((p + 1) * size / reference_size)) - 1, 0), size - 1)


@register_trigger
class FrequencyTrigger(Trigger):
    """CTRL's trigger: ``magnitude`` on the DCT of U and V (RGB images) or of the luma Y, the only
    channel of a grey image (1-channel images), at the same coefficients (module docstring)."""

    name = "frequency"

    def __init__(
        self,
        magnitude: float = 100.0 / 255.0,
        positions: Sequence[Sequence[int]] = ((15, 15), (31, 31)),
        reference_size: int = 32,
        yuv_channels: Sequence[int] = (1, 2),
    ) -> None:
        super().__init__()
        positions = [[int(r), int(c)] for r, c in positions]
        if not positions:
            raise ConfigError("the frequency trigger needs at least one (row, col) position.")
        if int(reference_size) < 1 or any(min(p) < 0 or max(p) >= reference_size for p in positions):
            raise ConfigError(
                f"frequency positions must lie in [0, reference_size={reference_size}), got {positions}."
            )
        chans = [int(c) for c in yuv_channels]
        if not chans or any(c not in (0, 1, 2) for c in chans):
            raise ConfigError(f"yuv_channels must be among 0 (Y), 1 (U), 2 (V), got {list(yuv_channels)}.")
        self.magnitude = float(magnitude)
        self.positions = positions
        self.reference_size = int(reference_size)
        self.yuv_channels = chans

    def params(self) -> Dict[str, Any]:
        return {
            "magnitude": self.magnitude,
            "positions": [list(p) for p in self.positions],
            "reference_size": self.reference_size,
            "yuv_channels": list(self.yuv_channels),
        }

    def coefficients(self, H: int, W: int) -> list[tuple[int, int]]:
        """The (row, col) DCT coefficients changed on ``H x W`` images (duplicates removed)."""
        out: list[tuple[int, int]] = []
        for r, c in self.positions:
            rc = (scale_position(r, H, self.reference_size), scale_position(c, W, self.reference_size))
            if rc not in out:
                out.append(rc)
        return out

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        C, H, W = x.shape[1:]
        z = x.to(torch.float64)
        if C == 3:
            z, chans = rgb_to_yuv(z), self.yuv_channels
        elif C == 1:
            chans = [0]  # grey: the channel is the luma Y; perturb its DCT (module docstring)
        else:
            raise ConfigError(f"the frequency trigger needs 1- or 3-channel images, got {C} channels.")
        Z = dct2(z)
        bump = torch.zeros(C, H, W, dtype=Z.dtype, device=Z.device)
        for r, c in self.coefficients(H, W):
            bump[chans, r, c] = self.magnitude
        z = idct2(Z + bump)
        if C == 3:
            z = yuv_to_rgb(z)
        return z.to(x.dtype)
