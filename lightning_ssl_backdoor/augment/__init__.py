"""Device-side batch augmentation (``nn.Module``s on float ``[B, C, H, W]`` batches in [0, 1]).

- :class:`WeakAugment`: FixMatch's flip-and-shift, per sample.
- :class:`CropScaleVFlip`: Pal et al.'s RCS0.5 + VFlip (crop half the area, resize, flip upside down).
- :class:`StrongAugment`: FixMatch's per-sample RandAugmentMC + Cutout (Sohn et al., 2020).
- :data:`OPS` / :data:`FUNCTIONS`: the 14 RandAugment operations and their functional forms
  ``fn(x, magnitude_per_sample)`` (also importable one by one from :mod:`.ops`).
"""

from lightning_ssl_backdoor.augment.crop_flip import CropScaleVFlip
from lightning_ssl_backdoor.augment.gaussian import GaussianFilter
from lightning_ssl_backdoor.augment.ops import (
    auto_contrast,
    brightness,
    color,
    contrast,
    cutout,
    equalize,
    identity,
    posterize,
    rotate,
    sharpness,
    shear_x,
    shear_y,
    solarize,
    translate_x,
    translate_y,
    warp_affine,
)
from lightning_ssl_backdoor.augment.randaugment import (
    FUNCTIONS,
    OPS,
    StrongAugment,
    StrongParams,
    op_magnitude,
)
from lightning_ssl_backdoor.augment.weak import WeakAugment, WeakParams

__all__ = [
    "CropScaleVFlip",
    "FUNCTIONS",
    "GaussianFilter",
    "OPS",
    "StrongAugment",
    "StrongParams",
    "WeakAugment",
    "WeakParams",
    "auto_contrast",
    "brightness",
    "color",
    "contrast",
    "cutout",
    "equalize",
    "identity",
    "op_magnitude",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
    "warp_affine",
]
