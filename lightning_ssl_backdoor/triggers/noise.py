"""Bounded additive noise trigger (Narcissus, Zeng et al. 2023; used by BI, 001 App. B.2.3).

``x + multiplier * delta`` with ``|delta| <= eps`` everywhere (L-inf; Narcissus: 16/255). The
poisons carry ``delta`` itself (:meth:`NoiseTrigger.apply_scaled` with scale 1); at test time the
trigger is magnified (Narcissus: x3), which is what ``forward`` applies (``multiplier``). ``delta``
is resized bilinearly when the image size differs from its own.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.triggers.base import Trigger, check_batch, match_channels, register_trigger
from lightning_ssl_backdoor.triggers.blend import resize_pattern


@register_trigger
class NoiseTrigger(Trigger):
    name = "noise"

    def __init__(self, delta: torch.Tensor, eps: float = 16.0 / 255.0, multiplier: float = 3.0) -> None:
        super().__init__()
        delta = torch.as_tensor(delta, dtype=torch.float32)
        if delta.ndim != 3 or delta.shape[0] not in (1, 3):
            raise ConfigError(f"a noise trigger delta must have shape [1 or 3, H, W], got {tuple(delta.shape)}.")
        if not 0.0 < float(eps) <= 1.0:
            raise ConfigError(f"noise trigger eps must lie in (0, 1], got {eps}.")
        self.eps = float(eps)
        self.multiplier = float(multiplier)
        self.register_buffer("delta", delta.clamp(-self.eps, self.eps))

    def params(self) -> Dict[str, Any]:
        return {"eps": self.eps, "multiplier": self.multiplier}

    def arrays(self) -> Dict[str, torch.Tensor]:
        return {"delta": self.delta.detach().cpu()}

    def scaled_delta(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        d = resize_pattern(self.delta.to(device=x.device, dtype=x.dtype), x.shape[-2], x.shape[-1])
        return scale * match_channels(d, x.shape[1])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scaled_delta(x, self.multiplier)

    def apply_scaled(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``clip(x + scale * delta)``: scale 1 for the training poisons."""
        check_batch(x)
        return (x + self.scaled_delta(x, scale)).clamp(0.0, 1.0)


def noise_from_config(
    channels: int,
    image_size: int,
    eps: float = 16.0 / 255.0,
    multiplier: float = 3.0,
    seed: int = 0,
) -> NoiseTrigger:
    """Config entry point of ``{"name": "noise"}``: seeded uniform noise in ``[-eps, eps]`` (attacks
    such as Narcissus replace it with an optimised ``delta``)."""
    g = torch.Generator().manual_seed(int(seed))
    c = 1 if channels == 1 else 3
    delta = (torch.rand(c, int(image_size), int(image_size), generator=g) * 2 - 1) * float(eps)
    return NoiseTrigger(delta, eps=eps, multiplier=multiplier)
