"""Static-shape application of drawn RandAugment parameters (issue 32): every operation is computed
for the whole batch with each image's own magnitude, and each image keeps the result of the
operation it drew (``torch.where`` under per-sample masks).

The grouped application in :class:`~lightning_ssl_backdoor.augment.StrongAugment` (``mode="grouped"``)
finds the images of each operation with ``nonzero`` and works on those only: least arithmetic, but a
host synchronisation per (slot, operation), shapes that depend on the draws (so no single compiled
graph, no CUDA graph) and several hundred small kernels. Here the work per slot is a fixed set of
about seventy batched ops whatever the draws (inductor fuses weak + strong into about 30 kernels),
at the price of computing every family of operations on every image (little on a GPU at these
sizes; on a CPU about twice the grouped form's time, benchmarks/results/gpu_readiness.md).

The operations are grouped in families that share one pass, each equal (to float rounding) to the
Kornia-based functional op of :mod:`lightning_ssl_backdoor.augment.ops` it replaces:

- blends ``d + (x - d) f`` with the degenerate image ``d``: black (Brightness), the luma (Color),
  the mean luma (Contrast), PIL's SMOOTH filter with the border kept (Sharpness);
- AutoContrast: ``(x - min) / (max - min)`` per channel, flat channels kept;
- Solarize: ``1 - x`` where ``x >= threshold``;
- Equalize and Posterize: one 256-entry look-up table per channel (PIL's equalisation table from the
  channel's histogram, or the bit mask) read at the pixel's 8-bit level;
- Rotate, ShearX/Y, TranslateX/Y: one bilinear ``grid_sample`` with each image's output-to-input
  matrix (the inverse of each op is the same op with the negated magnitude) and gray fill blended by
  the sampled coverage, as Kornia's ``warp_affine(padding_mode="fill")``.

Magnitudes follow :func:`~lightning_ssl_backdoor.augment.randaugment.op_magnitude` (FixMatch's
RandAugmentMC, Sohn et al. 2020, Table 12).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as TF

__all__ = ["apply_masked"]

#: the operations computed here (Identity is the absence of one), and the per-(image, slot) feature
#: columns read from :func:`op_features`'s table
_NAMES = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Posterize", "Rotate", "Sharpness",
          "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
_FEATURES = ("scale", "color", "contrast", "sharp", "auto", "solar", "lut", "equal", "geo", "rotate", "shear_x",
             "shear_y", "move_x", "move_y", "unit")
_OF = {  # which features each op switches on ("scale": the blend factor multiplies the image)
    "AutoContrast": ("auto",), "Brightness": ("scale",), "Color": ("scale", "color"),
    "Contrast": ("scale", "contrast"), "Equalize": ("lut", "equal"), "Posterize": ("lut",),
    "Rotate": ("geo", "rotate"), "Sharpness": ("scale", "sharp"), "ShearX": ("geo", "shear_x"),
    "ShearY": ("geo", "shear_y"), "Solarize": ("solar",), "TranslateX": ("geo", "move_x"),
    "TranslateY": ("geo", "move_y"),
}
#: geometric magnitude at level m (op_magnitude: 30 degrees, shear 0.3, translation 0.3 of the side)
_UNIT = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateX": 0.3, "TranslateY": 0.3}
#: PIL's "L" luma weights (ITU-R 601-2), as ``kornia.color.rgb_to_grayscale``
LUMA = (0.299, 0.587, 0.114)


def op_features(names: Sequence[str]) -> torch.Tensor:
    """Float table ``[len(names) + 1, len(_FEATURES)]``: row ``k + 1`` holds the features of op
    ``names[k]`` (0/1 flags, and the geometric unit), row 0 (a slot not applied) none. Built once on
    the host (a module buffer), so no host-to-device copy happens per batch."""
    table = torch.zeros(len(names) + 1, len(_FEATURES))
    for k, name in enumerate(names):
        for feat in _OF.get(name, ()):
            table[k + 1, _FEATURES.index(feat)] = 1.0
        table[k + 1, _FEATURES.index("unit")] = _UNIT.get(name, 0.0)
    return table


def _col(feat: torch.Tensor, name: str) -> torch.Tensor:
    return feat[..., _FEATURES.index(name)]


def _b(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return x[:, 0:1] * LUMA[0] + x[:, 1:2] * LUMA[1] + x[:, 2:3] * LUMA[2]


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3 x 3, weights 1 and centre 5, over 13) on the interior, clamped; border
    pixels keep their values (``kornia.enhance.sharpness``'s degenerate image). Images smaller than
    3 x 3 are returned as they are. Separable box sums of shifted views (cheaper than a depthwise
    convolution on a CPU)."""
    if min(x.shape[-2:]) < 3:
        return x
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    centre = x[..., 1:-1, 1:-1]
    inner = torch.add(box, centre, alpha=4.0).div_(13.0).clamp_(0.0, 1.0)
    return x + TF.pad(inner - centre, (1, 1, 1, 1))


def _lut_levels(x: torch.Tensor, posterize_bits: torch.Tensor, use_equalize: torch.Tensor,
                levels: torch.Tensor) -> torch.Tensor:
    """Equalize (where ``use_equalize``) or Posterize to ``posterize_bits`` (elsewhere), as one table
    look-up per channel at the pixel's 8-bit level ``round(255 x)`` (``levels``: 0..255).

    Equalize is PIL's ``ImageOps.equalize``: with ``hist`` the channel's histogram, ``N`` its pixel
    count and ``h_last`` the count of its largest present level, ``step = (N - h_last) // 255`` and
    level ``i`` maps to ``(step // 2 + sum(hist[:i])) // step`` (clipped to 255); a channel with
    ``step == 0`` keeps its levels. Posterize keeps the ``bits`` highest bits of the level."""
    b, c, h, w = x.shape
    index = (x * 255.0).round_().clamp_(0.0, 255.0).long().view(b * c, h * w)
    one = torch.ones((), dtype=x.dtype, device=x.device).expand(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=x.dtype, device=x.device).scatter_add_(1, index, one)
    last = index.amax(1, keepdim=True)  # the largest present level
    step = torch.div(h * w - hist.gather(1, last), 255, rounding_mode="floor")  # [BC, 1]
    below = hist.cumsum(1) - hist  # sum(hist[:i])
    equal = torch.div(torch.add(below, step, alpha=0.5).floor_(), step.clamp(min=1), rounding_mode="floor")
    equal = torch.where(step > 0, equal.clamp_(max=255.0), levels)
    size = torch.exp2(8.0 - posterize_bits).view(b, 1, 1)  # 2 ** (8 - bits)
    poster = torch.div(levels, size, rounding_mode="floor").mul_(size)  # [B, 1, 256]
    table = torch.where(use_equalize.view(b, 1, 1), equal.view(b, c, 256), poster)
    return table.view(b * c, 256).gather(1, index).view(b, c, h, w).div_(255.0)


def _inverse_affine(h: int, w: int, feat: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """``affine_grid`` matrices ``[..., 2, 3]`` (normalised, ``align_corners=True``) of each image's
    OUTPUT-to-INPUT map: rotation by ``mag`` degrees about the centre, PIL's shear by ``mag`` about
    the top-left corner, or a translation by ``mag`` of the side, each inverted by negating ``mag``
    (identity elsewhere). In pixel-centre coordinates (Kornia's ``warp_affine``) the map is
    ``x_in = cos x + (shx - sin) y + (1 - cos) cx + sin cy + shx / 2 - tx`` and
    ``y_in = (sin + shy) x + cos y + (1 - cos) cy - sin cx + shy / 2 - ty``; with
    ``x = (u + 1) sx``, ``sx = (W - 1) / 2 = cx``, ``k = sy / sx`` it becomes the matrix below."""
    sx, sy = max(w - 1, 1) / 2.0, max(h - 1, 1) / 2.0
    k = sy / sx
    angle = _col(feat, "rotate") * mag
    cos, sin = torch.cos(angle), torch.sin(angle)
    shx, shy = _col(feat, "shear_x") * mag, _col(feat, "shear_y") * mag
    e01 = (shx - sin) * k
    e02 = torch.sub(shx * (k + 0.5 / sx), _col(feat, "move_x") * mag, alpha=w / sx)
    e10 = (sin + shy) / k
    e12 = torch.sub(shy * (1.0 / k + 0.5 / sy), _col(feat, "move_y") * mag, alpha=h / sy)
    return torch.stack([cos, e01, e02, e10, cos, e12], -1).unflatten(-1, (2, 3))


def _warp_fill(x: torch.Tensor, theta: torch.Tensor, fill: float) -> torch.Tensor:
    """Bilinear resampling with gray ``fill`` blended by the sampled coverage of the image."""
    b, c, h, w = x.shape
    grid = TF.affine_grid(theta, [b, c + 1, h, w], align_corners=True)
    src = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    out = TF.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return torch.add(out[:, :c], 1.0 - out[:, c:], alpha=float(fill)).clamp_(0.0, 1.0)


def apply_masked(
    x: torch.Tensor, table: torch.Tensor, m: float, ops: torch.Tensor, levels: torch.Tensor,
    apply: torch.Tensor, signs: torch.Tensor, fill: float,
) -> torch.Tensor:
    """RandAugment slots on the whole batch without data-dependent shapes (see the module doc).

    ``table``: :func:`op_features` of the module's op list (``ops`` indexes that list), on
    ``x.device``; ``levels``, ``apply``, ``signs``: ``[B, n]`` as in
    :class:`~lightning_ssl_backdoor.augment.StrongParams`. Cutout is the caller's."""
    h, w = x.shape[-2:]
    dtype, dev = x.dtype, x.device
    feat = table.to(dtype)[torch.where(apply.to(dev), ops.to(dev) + 1, 0)]  # [B, n, F]
    on = feat > 0
    r = levels.to(dev, dtype) / m
    factor = 0.9 * r + 0.05  # enhancement factor
    f = torch.where(_col(on, "scale"), factor, 1.0)  # what multiplies the image
    keep = 1.0 - f  # weight of the degenerate image in a blend
    w_contrast, w_degenerate = _col(feat, "contrast") * keep, (_col(feat, "color") + _col(feat, "sharp")) * keep
    bits = torch.floor(4.0 * r).add_(4.0)
    threshold = torch.where(_col(on, "solar"), (256.0 - 256.0 * r) / 255.0, math.inf)
    degrees = math.pi / 180.0
    theta = _inverse_affine(h, w, feat, signs.to(dev, dtype) * r * _col(feat, "unit")
                            * (_col(feat, "rotate") * (degrees - 1.0) + 1.0)).to(dtype)  # [B, n, 2, 3]
    grid_levels = torch.arange(256, dtype=dtype, device=dev)
    out = x
    for s in range(ops.shape[1]):
        y, fs, os_ = out, feat[:, s], on[:, s]
        gray = _luma(y)
        # per channel y * a + bias: the blend factor, Contrast's mean luma, AutoContrast's stretch
        low, high = y.amin((2, 3), keepdim=True), y.amax((2, 3), keepdim=True)
        stretch = (high > low) & _b(_col(os_, "auto"))
        span = torch.where(stretch, high - low, 1.0)
        a = torch.where(stretch, span.reciprocal(), _b(f[:, s]))
        bias = torch.where(stretch, -low / span, gray.mean((2, 3), keepdim=True) * _b(w_contrast[:, s]))
        res = torch.addcmul(bias, y, a)
        # Color and Sharpness: + (1 - f) * degenerate image (luma, smoothed image)
        degenerate = torch.where(_b(_col(os_, "color")), gray, _smooth(y))
        res = torch.addcmul(res, degenerate, _b(w_degenerate[:, s]))
        res = torch.where(y >= _b(threshold[:, s]), 1.0 - y, res).clamp_(0.0, 1.0)  # Solarize
        res = torch.where(_b(_col(os_, "lut")), _lut_levels(y, bits[:, s], _col(os_, "equal"), grid_levels), res)
        out = torch.where(_b(_col(os_, "geo")), _warp_fill(y, theta[:, s], fill), res)
    return out
