"""WaNet warping trigger (Nguyen & Tran, ICLR 2021; as used by DBD, 003 App. B.2).

A random ``k x k`` control grid of 2-D offsets, uniform in [-1, 1] and normalised by its mean
absolute value, is upsampled bicubically (``align_corners=True``) to the image size and added to
the identity sampling grid with strength ``s / H * grid_rescale``; the grid is clamped to [-1, 1]
and the image is resampled with ``grid_sample`` (bilinear, ``align_corners=True``).

The "noise mode" (``noise(x, generator)``) adds an extra per-image random offset, uniform in
``[-1, 1] / H``, to the warp grid: WaNet's cross samples, which keep their true labels so that the
network learns the exact warp rather than any warp. DBD's defaults: ``k = 4``, ``s = 0.5``, noise
rate 0.2.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.triggers.base import Trigger, check_batch, register_trigger


@register_trigger
class WarpTrigger(Trigger):
    """WaNet warp with a stored control grid ``control`` (``[2, k, k]``)."""

    name = "warp"

    def __init__(self, control: torch.Tensor, s: float = 0.5, grid_rescale: float = 1.0,
                 k: Optional[int] = None) -> None:
        super().__init__()
        control = torch.as_tensor(control, dtype=torch.float32)
        if control.ndim != 3 or control.shape[0] != 2 or control.shape[1] != control.shape[2]:
            raise ConfigError(f"a WaNet control grid must have shape [2, k, k], got {tuple(control.shape)}.")
        if k is not None and int(k) != control.shape[-1]:
            raise ConfigError(f"WaNet k={k} does not match the {control.shape[-1]}x{control.shape[-1]} control grid.")
        self.register_buffer("control", control)
        self.s = float(s)
        self.grid_rescale = float(grid_rescale)

    @property
    def k(self) -> int:
        return int(self.control.shape[-1])

    def params(self) -> Dict[str, Any]:
        return {"k": self.k, "s": self.s, "grid_rescale": self.grid_rescale}

    def arrays(self) -> Dict[str, torch.Tensor]:
        return {"control": self.control.detach().cpu()}

    def grid(self, H: int, W: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The ``[1, H, W, 2]`` sampling grid (x, y order, as ``grid_sample`` expects)."""
        ctrl = self.control.to(device=device, dtype=dtype).unsqueeze(0)
        offsets = F.interpolate(ctrl, size=(H, W), mode="bicubic", align_corners=True)
        offsets = offsets.permute(0, 2, 3, 1)  # [1, H, W, 2]
        ys = torch.linspace(-1.0, 1.0, H, device=device, dtype=dtype)
        xs = torch.linspace(-1.0, 1.0, W, device=device, dtype=dtype)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack((xx, yy), dim=-1).unsqueeze(0)
        return (identity + self.s * offsets / H * self.grid_rescale).clamp(-1.0, 1.0)

    def _sample(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.expand(x.shape[0], -1, -1, -1) if grid.shape[0] == 1 else grid
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._sample(x, self.grid(x.shape[-2], x.shape[-1], x.device, x.dtype))

    def noise(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Noise-mode warp: the trigger grid plus a random per-image offset in ``[-1, 1] / H``."""
        check_batch(x)
        B, _, H, W = x.shape
        grid = self.grid(H, W, x.device, x.dtype)
        extra = torch.rand(B, H, W, 2, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        return self._sample(x, (grid + extra / H).clamp(-1.0, 1.0)).clamp(0.0, 1.0)


def warp_from_config(k: int = 4, s: float = 0.5, grid_rescale: float = 1.0, seed: int = 0) -> WarpTrigger:
    """Config entry point of ``{"name": "warp"}``: a seeded control grid of size ``k``."""
    if int(k) != k or k < 2:
        raise ConfigError(f"WaNet k (control grid size) must be an integer >= 2, got {k!r}.")
    g = torch.Generator().manual_seed(int(seed))
    ins = torch.rand(2, int(k), int(k), generator=g) * 2 - 1
    ins = ins / ins.abs().mean()
    return WarpTrigger(ins, s=s, grid_rescale=grid_rescale)
