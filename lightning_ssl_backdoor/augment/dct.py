"""Batched orthonormal 2-D DCT-II and its inverse (DCT-III) over the last two axes, in torch.

The 1-D orthonormal DCT-II of a length-``N`` signal ``x`` is ``X[k] = a_k sum_n x[n] cos(pi (2n + 1) k / (2N))``
with ``a_0 = sqrt(1/N)`` and ``a_k = sqrt(2/N)`` for ``k > 0``: an orthogonal matrix ``D`` (``X = D x``),
so the inverse (the orthonormal DCT-III) is ``D^T`` and Parseval holds (``||X|| = ||x||``). The 2-D
transform of an ``H x W`` image is ``D_H x D_W^T`` (scipy's ``dctn(..., norm="ortho")``; OpenCV's
``cv2.dct`` on a float image is the same transform). Both directions are two matrix products, so any
leading batch / channel axes and any device (CPU, CUDA) work unchanged.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["dct_matrix", "dct2", "idct2"]


def dct_matrix(n: int, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``[n, n]``, row ``k`` = frequency ``k``), built in float64."""
    if int(n) < 1:
        raise ConfigError(f"a DCT needs a length of at least 1, got {n}.")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    t = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2.0 * t + 1.0) * k / (2.0 * n)) * math.sqrt(2.0 / n)
    d[0] = math.sqrt(1.0 / n)
    return d.to(device=device, dtype=dtype)


def _matrices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 2:
        raise ConfigError(f"a 2-D DCT needs at least two axes, got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise ConfigError(f"a 2-D DCT needs floating-point input, got {x.dtype}; convert the pixels first.")
    h, w = x.shape[-2:]
    return dct_matrix(h, x.device, x.dtype), dct_matrix(w, x.device, x.dtype)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II of ``x`` ``[..., H, W]``: ``D_H x D_W^T``."""
    dh, dw = _matrices(x)
    return dh @ x @ dw.T


def idct2(c: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-III (the inverse of :func:`dct2`) of ``c`` ``[..., H, W]``: ``D_H^T c D_W``."""
    dh, dw = _matrices(c)
    return dh.T @ c @ dw
