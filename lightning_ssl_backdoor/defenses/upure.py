"""``defense: upure``: Unlabeled Data Purification in the DCT domain (Lee et al., WACV 2025,
"Defending Against Repetitive Backdoor Attacks on Semi-supervised Learning through Lens of
Rate-Distortion-Perception Trade-off", arXiv 2407.10180).

UPure perturbs the high frequencies of every unlabeled image before SSL training, to break the link
between a (repetitive, high-frequency) trigger and the target class; it needs no clean data and
leaves the labeled set alone. Per image ``x`` and colour channel (the paper's Sec. 3, "UPure"):

    X = DCT2(x)                                   (orthonormal 2-D DCT-II, augment/dct.py)
    X~ = X + M_tau * n,  n ~ N(0, sigma^2) i.i.d.  (the perturbation in the frequency domain)
    x~ = Q(clip(IDCT2(X~), 0, 1))                  (back to pixels; Q: the uint8 grid)

``M_tau`` is the indicator of the ``tau x tau`` block of the HIGHEST frequencies (the bottom-right
corner of the coefficient array, rows and columns ``H - tau .. H - 1``). The paper derives the block's
size from its rate-distortion-perception (RDP) argument (Sec. 4): the block must cover the band a
repetitive trigger lives in while the distortion it causes stays below what perception notices;
at CIFAR's 32 px its choice is ``tau = 16``, half the side. ``tau: null`` takes that rule, half the
image side (8 at 16 px).

The distortion is known in closed form (Parseval, the DCT being orthonormal): before clipping and
rounding, ``||x~ - x||^2 = ||M_tau * n||^2`` per channel, of mean ``tau^2 sigma^2``; the mean squared
error per pixel is ``tau^2 sigma^2 / (H W)`` (:func:`distortion_bound`). Clipping to ``[0, 1]`` can
only shrink it (a projection onto a box that holds ``x``); rounding adds at most half a grey level.

Defaults are the authors' code (github.com/chengyi-chris/UPure, ``datasets/cifar.py``, read, not
copied): each RGB channel separately, ``n`` standard normal on the orthonormal coefficients of pixels
in 0..255, i.e. ``sigma = 1/255`` here where pixels are in [0, 1]; the block ``tau = H / 2``; applied
ONCE to the unlabeled set before training (a fixed draw per image, not redrawn per epoch). The
authors cast the result back to uint8 by truncation; here it is rounded (the project's one
quantiser), which is unbiased. The equation and section pointers above follow the paper's
structure as its code shows it; the paper's text was not available where this was written.

``defense_info``: ``tau``, ``sigma``, the realised per-pixel RMSE on clean and on poisoned unlabeled
images (in grey levels of 255), the bound's RMSE, and, where the split carries a trigger, the share
of the trigger's energy inside the block (``trigger_band_share``) and the ratio of the noise's
energy to the trigger's in-band energy (``noise_to_trigger_band``): UPure can only drown a trigger
whose energy sits in the block and is small beside ``tau^2 sigma^2``.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Optional

import torch

from lightning_ssl_backdoor.augment.dct import dct2, idct2
from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.data.imageset import quantize
from lightning_ssl_backdoor.defenses.base import DataDefense, DefenseContext, register_defense
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["UPure", "band_mask", "distortion_bound", "perturb_high_band", "resolve_tau"]

SEED_OFFSET = 33_000  # the noise stream of seed s is seed s + this (not the attack's or the split's)


def resolve_tau(tau: Optional[int], height: int, width: int) -> int:
    """The block side: ``tau``, or half the shorter image side when ``None`` (the paper's 16 at 32 px)."""
    side = min(int(height), int(width))
    t = side // 2 if tau is None else int(tau)
    if not 0 <= t <= side:
        raise ConfigError(f"upure tau must be between 0 and the image side {side}, got {tau}.")
    return t


def band_mask(height: int, width: int, tau: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """``M_tau``: 1 on the ``tau x tau`` block of the highest DCT frequencies (bottom-right), else 0."""
    m = torch.zeros(height, width, device=device)
    if tau > 0:
        m[height - tau:, width - tau:] = 1.0
    return m


def distortion_bound(tau: int, sigma: float, height: int, width: int) -> float:
    """The expected mean squared error per pixel of the unclipped, unrounded purification:
    ``tau^2 sigma^2 / (H W)`` (Parseval over the orthonormal DCT)."""
    return float(tau) ** 2 * float(sigma) ** 2 / (int(height) * int(width))


def perturb_high_band(
    x: torch.Tensor,
    tau: int,
    sigma: float,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``IDCT2(DCT2(x) + M_tau * n)`` for float images ``x`` ``[B, C, H, W]`` (no clipping, no rounding).

    ``noise``: standard normal draws shaped like ``x`` (drawn with ``generator`` when ``None``); only
    its entries inside the block are used, scaled by ``sigma``."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ConfigError(f"upure purifies float images [B, C, H, W], got {x.dtype} {tuple(x.shape)}.")
    if sigma < 0:
        raise ConfigError(f"upure sigma must be >= 0, got {sigma}.")
    h, w = x.shape[-2:]
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    mask = band_mask(h, w, tau, x.device).to(x.dtype)
    return idct2(dct2(x) + float(sigma) * mask * noise.to(x))


def _trigger_band(split: SSLSplit, tau: int, sigma: float, device: torch.device) -> dict[str, float]:
    """Where the split's trigger puts its energy: share inside ``M_tau`` and noise / in-band energy."""
    trigger = getattr(split, "trigger", None)
    if trigger is None or len(split.test) == 0:
        return {}
    x = split.test.images[:64].to(device).float().div(255.0)
    with torch.no_grad():
        delta = trigger(x).float() - x
    coeffs = dct2(delta).pow(2)
    h, w = x.shape[-2:]
    inside = (coeffs * band_mask(h, w, tau, device)).sum(dim=(-1, -2))  # [B, C]
    total = coeffs.sum(dim=(-1, -2)).clamp_min(1e-12)
    share = float((inside.sum() / total.sum()).item())
    ratio = float(tau * tau * sigma * sigma / max(float(inside.mean().item()), 1e-12))
    return {"trigger_band_share": round(share, 4), "noise_to_trigger_band": round(ratio, 4)}


@register_defense
class UPure(DataDefense):
    """Perturb the ``tau x tau`` highest-frequency DCT block of every unlabeled image, once.

    Args:
        tau: side of the block in coefficients (``None``: half the image side, the paper's rule).
        sigma: standard deviation of the Gaussian added to each coefficient in the block, in [0, 1]
            pixel units on the orthonormal DCT (default 1/255: the authors' N(0, 1) on 0..255 pixels).
        chunk: images purified per batch.
        device: ``auto`` (CUDA when available), ``cpu`` or a torch device string.
    """

    name = "upure"

    def __init__(self, tau: Optional[int] = None, sigma: float = 1.0 / 255.0, chunk: int = 1024,
                 device: str = "auto") -> None:
        if tau is not None and int(tau) < 0:
            raise ConfigError(f"upure tau must be >= 0 (or null for half the image side), got {tau}.")
        if not (float(sigma) >= 0 and math.isfinite(float(sigma))):
            raise ConfigError(f"upure sigma must be a finite number >= 0, got {sigma}.")
        if int(chunk) < 1:
            raise ConfigError(f"upure chunk must be >= 1, got {chunk}.")
        self.tau, self.sigma, self.chunk = None if tau is None else int(tau), float(sigma), int(chunk)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if device == "auto" else device))

    def purify(self, images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Purified uint8 images and the per-image squared error (float pixels) of uint8 ``images``."""
        h, w = images.shape[-2:]
        tau = resolve_tau(self.tau, h, w)
        g = torch.Generator(device=self.device).manual_seed(int(seed) + SEED_OFFSET)
        out, err = [], []
        for s in range(0, len(images), self.chunk):
            x = images[s:s + self.chunk].to(self.device).float().div(255.0)
            y = quantize(perturb_high_band(x, tau, self.sigma, generator=g))
            out.append(y.cpu())
            err.append((y.float().div(255.0) - x).pow(2).sum(dim=(1, 2, 3)).cpu())
        if not out:
            return images.clone(), torch.zeros(0)
        return torch.cat(out), torch.cat(err)

    def filter(self, split: SSLSplit, ctx: DefenseContext) -> tuple[SSLSplit, dict[str, Any]]:
        t0 = time.perf_counter()
        images = split.unlabeled.images
        c, h, w = images.shape[1:]
        tau = resolve_tau(self.tau, h, w)
        purified, sq_err = self.purify(images, ctx.seed)
        new_split = replace(split, unlabeled=replace(split.unlabeled, images=purified))
        per_pixel = sq_err / float(c * h * w)
        poison = getattr(split, "unlabeled_poison_mask", None)
        poison = torch.zeros(len(images), dtype=torch.bool) if poison is None else poison.bool()

        def rmse(sel: torch.Tensor) -> Optional[float]:
            return round(255.0 * math.sqrt(float(per_pixel[sel].mean())), 4) if bool(sel.any()) else None

        info: dict[str, Any] = {
            "tau": tau,
            "sigma": self.sigma,
            "rmse_clean_255": rmse(~poison),
            "rmse_poisoned_255": rmse(poison),
            "rmse_bound_255": round(255.0 * math.sqrt(distortion_bound(tau, self.sigma, h, w)), 4),
            "changed_pixels": round(float((purified != images).float().mean()), 4),
            **_trigger_band(split, tau, self.sigma, self.device),
            "purify_seconds": round(time.perf_counter() - t0, 3),
        }
        return new_split, info
