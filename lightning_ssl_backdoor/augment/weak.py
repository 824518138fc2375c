"""Weak augmentation of FixMatch: random horizontal flip and pad-and-crop translation, per sample.

FixMatch (Sohn et al., 2020, Sec. 2.3) uses "a standard flip-and-shift augmentation strategy":
flip horizontally with probability 0.5, then translate by up to 12.5% (4 px on 32 x 32) via a
reflect-padded random crop. Here the whole batch is padded once (``torch.nn.functional.pad``:
Kornia has no functional reflect pad) and every image's window, mirrored where it drew a flip, is
read by one ``gather`` over the flattened padded planes (exact copying, no resampling): no Python
loop over images, no host synchronisation, and shapes that do not depend on the draws, so the crop
compiles into one graph and can be captured in a CUDA graph (issue 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.augment.ops import check_batch
from lightning_ssl_backdoor.errors import ConfigError

_PAD_MODES = ("reflect", "replicate", "circular", "constant")


@dataclass
class WeakParams:
    """Draws of one ``WeakAugment`` call: ``flip`` bool ``[B]``; ``top`` / ``left`` long ``[B]``
    offsets of each crop window in the padded image, in ``[0, 2 * pad]``."""

    flip: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor


class WeakAugment(nn.Module):
    """Per-sample horizontal flip (p = 0.5, if ``flip``) and random crop of the ``pad``-padded image
    back to the input size (``padding_mode`` as in ``torch.nn.functional.pad``; "constant" pads
    with zeros). Each image draws its own flip and offsets; the result for image ``i`` equals
    ``pad(x_i)[:, top_i : top_i + H, left_i : left_i + W]``, mirrored left-right if ``flip_i``.

    ``forward(x, generator=None)`` takes a float ``[B, C, H, W]`` batch on any device; draws come
    from the global torch RNG or ``generator`` (on ``x.device``) and are kept in ``last_params``.
    """

    def __init__(self, flip: bool = True, pad: int = 4, padding_mode: str = "reflect") -> None:
        super().__init__()
        if int(pad) != pad or pad < 0:
            raise ConfigError(f"WeakAugment pad must be a non-negative integer, got {pad!r}.")
        if padding_mode not in _PAD_MODES:
            raise ConfigError(
                f"WeakAugment padding_mode must be one of {list(_PAD_MODES)}, got {padding_mode!r}."
            )
        self.flip, self.pad, self.padding_mode = bool(flip), int(pad), padding_mode
        self.last_params: Optional[WeakParams] = None
        self._compiled = None

    def extra_repr(self) -> str:
        return f"flip={self.flip}, pad={self.pad}, padding_mode={self.padding_mode!r}"

    def sample_params(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: Optional[torch.Generator] = None,
    ) -> WeakParams:
        """Draw per-image flips and crop offsets."""
        kw = dict(device=device, generator=generator)
        flip = torch.rand(batch_size, **kw) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        top = torch.randint(0, 2 * self.pad + 1, (batch_size,), **kw)
        left = torch.randint(0, 2 * self.pad + 1, (batch_size,), **kw)
        return WeakParams(flip, top, left)

    def apply_params(self, x: torch.Tensor, params: WeakParams) -> torch.Tensor:
        """Pad once, then one gather reads every image's window (mirrored where it drew a flip);
        compiled after :meth:`compile_apply`."""
        check_batch(x)
        fn = self._augment_batch if self._compiled is None else self._compiled
        return fn(x, params.flip, params.top, params.left)

    def compile_apply(self, backend: str = "inductor") -> None:
        """Compile :meth:`apply_params` with ``torch.compile(fullgraph=True)``; the draws stay eager."""
        self._compiled = torch.compile(self._augment_batch, backend=backend, fullgraph=True, dynamic=False)

    def _augment_batch(self, x: torch.Tensor, flip: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pad
        if p > 0 and self.padding_mode == "reflect" and (p >= h or p >= w):
            raise ConfigError(
                f"WeakAugment reflect padding needs pad < image size, got pad={p} for {h}x{w}; "
                "lower pad or use padding_mode='replicate'."
            )
        padded = F.pad(x, (p, p, p, p), mode=self.padding_mode) if p > 0 else x
        hp, wp = h + 2 * p, w + 2 * p
        top, left = top.to(x.device).long(), left.to(x.device).long()
        cols = torch.arange(w, device=x.device)
        cols = torch.where(flip.to(x.device).view(b, 1), (w - 1) - cols, cols) + left.view(b, 1)  # [B, W]
        rows = torch.arange(h, device=x.device) + top.view(b, 1)  # [B, H]
        index = (rows * wp).view(b, 1, h, 1) + cols.view(b, 1, 1, w)  # [B, 1, H, W] into the flat plane
        flat = padded.reshape(b, c, hp * wp)
        return flat.gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_batch(x)
        params = self.sample_params(x.shape[0], device=x.device, generator=generator)
        self.last_params = params
        return self.apply_params(x, params)
