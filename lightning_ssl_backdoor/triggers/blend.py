"""Blended trigger (Chen et al. 2017, as used by DBD, 003 Sec. 3.1): ``G(x) = (1 - a) x + a t``.

The pattern ``t`` is an image (e.g. a "Hello Kitty"-like picture loaded from a file) or seeded
uniform noise (DBD's ImageNet setting); it is resized bilinearly to the image size when they
differ. DBD uses ``a = 0.1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError, DataFormatError
from lightning_ssl_backdoor.triggers.base import Trigger, check_unit, match_channels, on_grid, register_trigger


def resize_pattern(p: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Bilinearly resize a ``[C, h, w]`` pattern to ``H x W`` (identity when sizes agree)."""
    if tuple(p.shape[-2:]) == (H, W):
        return p
    return F.interpolate(p.unsqueeze(0), size=(H, W), mode="bilinear", align_corners=False)[0]


@register_trigger
class BlendTrigger(Trigger):
    """``(1 - alpha) * x + alpha * pattern`` with ``pattern`` ``[1 or C, h, w]`` in [0, 1]."""

    name = "blend"

    def __init__(self, pattern: torch.Tensor, alpha: float = 0.1, source: str = "custom") -> None:
        super().__init__()
        pattern = torch.as_tensor(pattern, dtype=torch.float32)
        if pattern.ndim == 2:
            pattern = pattern.unsqueeze(0)
        if pattern.ndim != 3 or pattern.shape[0] not in (1, 3):
            raise ConfigError(f"a blend pattern must have shape [1 or 3, h, w], got {tuple(pattern.shape)}.")
        self.register_buffer("pattern", on_grid(pattern))
        self.alpha = check_unit(alpha, "blend alpha")
        self.source = str(source)

    def params(self) -> Dict[str, Any]:
        return {"alpha": self.alpha, "source": self.source}

    def arrays(self) -> Dict[str, torch.Tensor]:
        return {"pattern": self.pattern.detach().cpu()}

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pattern.to(device=x.device, dtype=x.dtype)
        p = match_channels(resize_pattern(p, x.shape[-2], x.shape[-1]), x.shape[1])
        return (1.0 - self.alpha) * x + self.alpha * p


def load_pattern_file(path: str) -> torch.Tensor:
    """A pattern image from ``.npy`` (``[h, w]``, ``[h, w, C]`` or ``[C, h, w]``, uint8 or float in
    [0, 1], loaded without pickle) or any image format Pillow reads; returns float ``[C, h, w]``."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"blend pattern file '{p}' does not exist; give an existing .npy or image file.")
    if p.suffix.lower() == ".npy":
        a = np.load(p, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 3) and a.shape[0] not in (1, 3):
        a = a.transpose(2, 0, 1)
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise DataFormatError(f"blend pattern '{p}' has shape {a.shape}; expected [h, w], [h, w, C] or [C, h, w].")
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.float().div(255.0) if a.dtype == np.uint8 else t.float()


def blend_from_config(
    channels: int,
    image_size: int,
    alpha: float = 0.1,
    pattern_path: Optional[str] = None,
    pattern_size: Optional[int] = None,
    seed: int = 0,
) -> BlendTrigger:
    """Config entry point of ``{"name": "blend"}``: a pattern file, else seeded uniform noise of
    ``pattern_size`` (default: the image size) per pixel and channel."""
    if pattern_path is not None:
        return BlendTrigger(load_pattern_file(pattern_path), alpha, source=str(Path(pattern_path).name))
    s = int(pattern_size or image_size)
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(1 if channels == 1 else 3, s, s, generator=g)
    return BlendTrigger(noise, alpha, source="noise")
