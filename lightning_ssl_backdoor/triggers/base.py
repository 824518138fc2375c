"""`Trigger`: the base class of every backdoor trigger, and the registry that rebuilds them.

A trigger is an ``nn.Module`` on float ``[B, C, H, W]`` batches in [0, 1]: ``forward`` applies the
pattern in float and clips to [0, 1] (quantisation happens only when images are stored, see
:func:`lightning_ssl_backdoor.data.imageset.quantize`, so nothing ever wraps around near 255).

A trigger describes itself with ``manifest()`` (a JSON-able ``{"name", "params"}``) plus
``arrays()`` (its pattern tensors); :func:`trigger_from_manifest` rebuilds an identical trigger from
those two, which is how triggers travel inside PoisonedSplit artifacts.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Mapping, Type

import numpy as np
import torch
from torch import nn

from lightning_ssl_backdoor.errors import ArtifactError, ConfigError, DataFormatError

MIN_SIZE = 8

TRIGGERS: Dict[str, Type["Trigger"]] = {}


def register_trigger(cls: Type["Trigger"]) -> Type["Trigger"]:
    """Class decorator: make ``cls`` rebuildable from its manifest under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name` to be registered.")
    TRIGGERS[cls.name] = cls
    return cls


def check_batch(x: torch.Tensor) -> None:
    """Raise DataFormatError unless ``x`` is a float ``[B, C, H, W]`` batch with H, W >= 8."""
    if not isinstance(x, torch.Tensor):
        raise DataFormatError(f"a trigger takes a float tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise DataFormatError(
            f"a trigger takes float pixels in [0, 1], got {x.dtype}; convert uint8 images with "
            "`images.float() / 255` (or ImageSet.float()) first."
        )
    if x.ndim != 4:
        raise DataFormatError(f"a trigger takes a [B, C, H, W] batch, got shape {tuple(x.shape)}.")
    if x.shape[-1] < MIN_SIZE or x.shape[-2] < MIN_SIZE:
        raise DataFormatError(
            f"triggers need images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got "
            f"{x.shape[-2]}x{x.shape[-1]}; resize the dataset (image_size) first."
        )


def match_channels(pattern: torch.Tensor, channels: int) -> torch.Tensor:
    """Map a ``[Cp, ...]`` pattern to ``channels`` channels.

    A 1-channel pattern is repeated; a 3-channel pattern on a 1-channel image becomes its luma
    (ITU-R BT.601 weights 0.299, 0.587, 0.114); equal counts pass through.
    """
    cp = pattern.shape[0]
    if cp == channels:
        return pattern
    if cp == 1:
        return pattern.expand(channels, *pattern.shape[1:])
    if cp == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=pattern.dtype, device=pattern.device)
        return (pattern * w.view(3, *([1] * (pattern.ndim - 1)))).sum(0, keepdim=True)
    raise DataFormatError(
        f"a {cp}-channel trigger pattern cannot be applied to {channels}-channel images; build "
        "the trigger for the dataset's channel count."
    )


def on_grid(pattern: torch.Tensor) -> torch.Tensor:
    """Round a float pattern in [0, 1] to the 1/255 grid (a pattern is an image: stored as uint8)."""
    return pattern.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


class Trigger(nn.Module):
    """Base class: ``forward(x)`` = ``clip(apply(x), 0, 1)`` on float ``[B, C, H, W]`` batches.

    Subclasses set ``name``, implement ``apply`` (float in, float out, no clipping needed),
    ``params()`` (JSON-able constructor arguments) and, when they hold pattern tensors, ``arrays()``.
    The constructor must accept ``**params`` and ``**arrays`` so that ``from_manifest`` rebuilds the
    trigger exactly.
    """

    name: ClassVar[str] = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x)
        return self.apply(x).clamp(0.0, 1.0)

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> Dict[str, Any]:
        return {}

    def arrays(self) -> Dict[str, torch.Tensor]:
        return {}

    def manifest(self) -> Dict[str, Any]:
        """``{"name": ..., "params": {...}}``; pattern tensors come separately from ``arrays()``."""
        return {"name": self.name, "params": _jsonable(self.params())}

    @classmethod
    def from_manifest(cls, params: Mapping[str, Any], arrays: Mapping[str, Any]) -> "Trigger":
        tensors = {k: _as_float_tensor(v) for k, v in arrays.items()}
        return cls(**dict(params), **tensors)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params().items())


def _as_float_tensor(v: Any) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(np.ascontiguousarray(v))
    return torch.as_tensor(v).float().clone()


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def trigger_from_manifest(manifest: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> Trigger:
    """Rebuild the trigger described by ``manifest`` (from ``Trigger.manifest()``) and its arrays."""
    if not isinstance(manifest, Mapping) or "name" not in manifest:
        raise ArtifactError("a trigger manifest must be a mapping with a 'name' key; re-save the trigger.")
    name = manifest["name"]
    if name not in TRIGGERS:
        raise ArtifactError(
            f"unknown trigger '{name}' in the manifest; known triggers: {', '.join(sorted(TRIGGERS))}."
        )
    try:
        return TRIGGERS[name].from_manifest(manifest.get("params", {}), arrays or {})
    except TypeError as e:
        raise ArtifactError(f"the manifest of trigger '{name}' does not match its constructor ({e}).") from None


def check_unit(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} must lie in [0, 1] (pixel scale), got {value}.")
    return value
