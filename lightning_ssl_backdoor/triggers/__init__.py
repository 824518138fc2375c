"""Backdoor triggers: float [0, 1] batch in, triggered and clipped batch out.

- :class:`PatchTrigger` (``"patch"``): BadNets squares, CL-BadNets four corners, DeNeB's 8x8 patch.
- :class:`BlendTrigger` (``"blend"``): blended pattern image or seeded noise.
- :class:`WarpTrigger` (``"warp"``): WaNet.
- :class:`MosaicTrigger` (``"mosaic"``): 1-pixel dot grid.
- :class:`FrequencyTrigger` (``"frequency"``): CTRL's YUV/DCT trigger.
- :class:`NoiseTrigger` (``"noise"``): bounded additive noise (Narcissus).

``build_trigger({"name": ..., **options}, image_shape)`` builds one from a config entry;
``trigger_from_manifest(trigger.manifest(), trigger.arrays())`` rebuilds one exactly.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Sequence

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.triggers.base import (
    TRIGGERS,
    Trigger,
    check_batch,
    register_trigger,
    trigger_from_manifest,
)
from lightning_ssl_backdoor.triggers.blend import BlendTrigger, blend_from_config, load_pattern_file
from lightning_ssl_backdoor.triggers.frequency import FrequencyTrigger, dct2, idct2, rgb_to_yuv, yuv_to_rgb
from lightning_ssl_backdoor.triggers.mosaic import MosaicTrigger
from lightning_ssl_backdoor.triggers.noise import NoiseTrigger, noise_from_config
from lightning_ssl_backdoor.triggers.patch import (
    CORNERS,
    PatchTrigger,
    badnets_patch,
    deneb_patch,
    four_corner_patch,
    patch_from_config,
)
from lightning_ssl_backdoor.triggers.warp import WarpTrigger, warp_from_config


def _mosaic(gap: int = 1, intensity: float = 25.0 / 255.0, offset: int = 0) -> MosaicTrigger:
    return MosaicTrigger(gap, intensity, offset)


def _frequency(
    magnitude: float = 100.0 / 255.0,
    positions: Sequence[Sequence[int]] = ((15, 15), (31, 31)),
    reference_size: int = 32,
    yuv_channels: Sequence[int] = (1, 2),
) -> FrequencyTrigger:
    return FrequencyTrigger(magnitude, positions, reference_size, yuv_channels)


# config name -> factory; factories may take `channels` and `image_size`, filled in from the data.
TRIGGER_FACTORIES: Dict[str, Callable[..., Trigger]] = {
    "patch": patch_from_config,
    "badnets": patch_from_config,
    "four_corner": four_corner_patch,
    "cl_badnets": four_corner_patch,
    "deneb": deneb_patch,
    "blend": blend_from_config,
    "warp": warp_from_config,
    "wanet": warp_from_config,
    "mosaic": _mosaic,
    "frequency": _frequency,
    "freq": _frequency,
    "noise": noise_from_config,
}


def build_trigger(spec: Mapping[str, Any] | str, image_shape: Sequence[int]) -> Trigger:
    """Build a trigger from ``{"name": <one of TRIGGER_FACTORIES>, **options}`` for images of
    ``image_shape`` ``(C, H, W)``; unknown names or options raise ConfigError."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError("a trigger config must be a mapping with a 'name' key, e.g. {name: badnets, size: 3}.")
    opts = dict(spec)
    name = str(opts.pop("name")).lower()
    if name not in TRIGGER_FACTORIES:
        raise ConfigError(f"unknown trigger '{name}'; choose one of {', '.join(sorted(TRIGGER_FACTORIES))}.")
    factory = TRIGGER_FACTORIES[name]
    accepted = set(inspect.signature(factory).parameters)
    filled = {"channels": int(image_shape[0]), "image_size": int(image_shape[-1])}
    unknown = sorted(set(opts) - (accepted - set(filled)))
    if unknown:
        raise ConfigError(
            f"trigger '{name}' does not take option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(sorted(accepted - set(filled))) or 'none'}."
        )
    kwargs = {k: v for k, v in filled.items() if k in accepted}
    kwargs.update(opts)
    return factory(**kwargs)


__all__ = [
    "BlendTrigger",
    "CORNERS",
    "FrequencyTrigger",
    "MosaicTrigger",
    "NoiseTrigger",
    "PatchTrigger",
    "TRIGGERS",
    "TRIGGER_FACTORIES",
    "Trigger",
    "WarpTrigger",
    "badnets_patch",
    "blend_from_config",
    "build_trigger",
    "check_batch",
    "dct2",
    "deneb_patch",
    "four_corner_patch",
    "idct2",
    "load_pattern_file",
    "noise_from_config",
    "register_trigger",
    "rgb_to_yuv",
    "trigger_from_manifest",
    "warp_from_config",
    "yuv_to_rgb",
]
