"""Batched image operations with one magnitude per sample.

Every function takes a float batch ``x`` of shape ``[B, C, H, W]`` (C = 1 or 3) with values in
[0, 1] and, where the operation has a strength, a tensor ``magnitude`` of shape ``[B]`` (a Python
number is broadcast to every image) in the operation's natural unit (an enhancement factor, a
number of bits, degrees, a shear factor, pixels, a threshold). The result has the input's shape,
dtype and device and is clipped to [0, 1].

The semantics follow the PIL operations that FixMatch's RandAugmentMC calls (Sohn et al., 2020,
"FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence", Table 12):
``ImageEnhance`` blends for Brightness / Color / Contrast / Sharpness, ``ImageOps`` for
AutoContrast / Equalize / Posterize / Solarize and affine warps for the geometric operations.
They work in float, so they agree with PIL up to PIL's uint8 rounding; Equalize and Posterize
quantise to 256 levels because they are defined on 8-bit histograms and bit patterns.
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import DataFormatError

Magnitude = Union[torch.Tensor, float, int]

# ITU-R 601-2 luma, the weights PIL uses to convert RGB to "L".
_LUMA = (0.299, 0.587, 0.114)


def check_batch(x: torch.Tensor) -> None:
    """Raise if ``x`` is not a floating ``[B, C, H, W]`` batch with 1 or 3 channels."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataFormatError(f"augmentation expects a [B, C, H, W] tensor, got {shape}.")
    if not x.is_floating_point():
        raise DataFormatError(
            f"augmentation expects float pixels in [0, 1], got {x.dtype}; convert uint8 batches "
            "with `x.float() / 255` first."
        )
    if x.shape[1] not in (1, 3):
        raise DataFormatError(
            f"augmentation expects 1 or 3 channels, got {x.shape[1]}; pass [B, C, H, W] batches."
        )


def _per_sample(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Magnitude as a float tensor of shape [B, 1, 1, 1] on ``x``'s device."""
    m = torch.as_tensor(magnitude, dtype=x.dtype, device=x.device)
    if m.ndim == 0:
        m = m.expand(x.shape[0])
    if m.shape != (x.shape[0],):
        raise DataFormatError(
            f"magnitude must be a number or have shape [{x.shape[0]}], got {tuple(m.shape)}."
        )
    return m.view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``, clipped."""
    return (degenerate + factor * (x - degenerate)).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``[B, 1, H, W]`` of an RGB batch (PIL's "L" weights); a 1-channel batch is returned."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def identity(x: torch.Tensor, magnitude: Magnitude = 0.0) -> torch.Tensor:
    """Identity: the batch unchanged (a copy); ``magnitude`` is ignored."""
    return x.clone()


def auto_contrast(x: torch.Tensor, magnitude: Magnitude = 0.0) -> torch.Tensor:
    """AutoContrast: stretch each channel of each image so its minimum is 0 and maximum 1.

    A constant channel is left unchanged (PIL's ``ImageOps.autocontrast`` with no cut-off).
    """
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    flat = span <= 0
    scaled = (x - lo) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, x, scaled).clamp_(0.0, 1.0)


def equalize(x: torch.Tensor, magnitude: Magnitude = 0.0) -> torch.Tensor:
    """Equalize: per-image, per-channel histogram equalisation on 256 bins (``ImageOps.equalize``).

    Pixels are quantised to levels ``q = round(255 x)``. With ``h`` the channel's histogram, ``N``
    its pixel count and ``h_last`` the count of its largest level, ``step = (N - h_last) // 255``
    and level ``i`` maps to ``(step // 2 + sum(h[:i])) // step``. Channels with ``step == 0``
    (near-constant) are left unchanged, as PIL does.
    """
    b, c, h, w = x.shape
    q = (x * 255.0).round_().clamp_(0, 255).long().reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, q, torch.ones_like(q))
    top = q.amax(dim=1, keepdim=True)
    step = (h * w - hist.gather(1, top)) // 255  # [BC, 1]
    cum_before = hist.cumsum(dim=1) - hist
    lut = (step // 2 + cum_before).div(step.clamp(min=1), rounding_mode="floor").clamp_(max=255)
    out = lut.gather(1, q).to(x.dtype).div_(255.0).reshape(b, c, h, w)
    keep = (step == 0).reshape(b, c, 1, 1)
    return torch.where(keep, x, out)


def brightness(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Brightness: blend with a black image by factor ``magnitude`` (1 = unchanged, 0 = black)."""
    return _blend(torch.zeros_like(x), x, _per_sample(x, magnitude))


def color(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Color (saturation): blend with the image's grayscale; identity on 1-channel images."""
    if x.shape[1] == 1:
        return x.clone()
    return _blend(grayscale(x), x, _per_sample(x, magnitude))


def contrast(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Contrast: blend with a constant image at the mean luma of each image (0 = flat gray)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean.expand_as(x), x, _per_sample(x, magnitude))


def sharpness(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Sharpness: blend with a smoothed copy (PIL's SMOOTH 3x3 kernel, weights 1 and centre 5,
    over 13); border pixels of the smoothed copy keep their original values, as in PIL."""
    b, c, h, w = x.shape
    degenerate = x.clone()
    if h >= 3 and w >= 3:
        kernel = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
        kernel[0, 0, 1, 1] = 5.0
        kernel /= 13.0
        smooth = F.conv2d(x.reshape(b * c, 1, h, w), kernel).reshape(b, c, h - 2, w - 2)
        degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, _per_sample(x, magnitude))


def posterize(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Posterize: keep the ``magnitude`` (integer 0..8) highest bits of each 8-bit level."""
    bits = _per_sample(x, magnitude).round().clamp(0, 8).long()
    mask = (255 << (8 - bits)) & 255
    q = (x * 255.0).round_().clamp_(0, 255).long()
    return (q & mask).to(x.dtype).div_(255.0)


def solarize(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Solarize: invert (``1 - x``) every pixel with ``x >= magnitude`` (a threshold in [0, 1])."""
    thr = _per_sample(x, magnitude)
    return torch.where(x >= thr, 1.0 - x, x).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Geometric operations. Matrices are 3x3, map OUTPUT pixel coordinates to INPUT pixel coordinates
# and use continuous coordinates with the origin at the top-left image corner (pixel (i, j) covers
# [j, j+1] x [i, i+1]; its centre is (j + 0.5, i + 0.5)), x to the right and y down.
# ----------------------------------------------------------------------------------------------


def _eye(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(3, dtype=x.dtype, device=x.device).repeat(x.shape[0], 1, 1)


def rotation_matrix(x: torch.Tensor, degrees: Magnitude) -> torch.Tensor:
    """Output-to-input matrices rotating each image counter-clockwise (as displayed) by
    ``degrees`` about its centre, like ``PIL.Image.rotate``."""
    h, w = x.shape[-2:]
    theta = _per_sample(x, degrees).view(-1) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    m = _eye(x)
    m[:, 0, 0], m[:, 0, 1] = cos, -sin
    m[:, 1, 0], m[:, 1, 1] = sin, cos
    m[:, 0, 2] = cx - cos * cx + sin * cy
    m[:, 1, 2] = cy - sin * cx - cos * cy
    return m


def shear_matrix(x: torch.Tensor, factor: Magnitude, axis: str) -> torch.Tensor:
    """Output-to-input matrices of PIL's shear (``x_in = x_out + factor * y_out`` for axis "x",
    ``y_in = y_out + factor * x_out`` for axis "y"), about the top-left corner."""
    s = _per_sample(x, factor).view(-1)
    m = _eye(x)
    if axis == "x":
        m[:, 0, 1] = s
    else:
        m[:, 1, 0] = s
    return m


def translation_matrix(x: torch.Tensor, pixels: Magnitude, axis: str) -> torch.Tensor:
    """Output-to-input matrices that move the content by ``pixels`` to the right (axis "x") or
    down (axis "y"); negative values move it left / up."""
    t = _per_sample(x, pixels).view(-1)
    m = _eye(x)
    m[:, 0 if axis == "x" else 1, 2] = -t
    return m


def warp_affine(
    x: torch.Tensor, matrix: torch.Tensor, fill: float = 0.5, mode: str = "bilinear"
) -> torch.Tensor:
    """Resample each image with its own output-to-input pixel matrix ``[B, 3, 3]`` (or
    ``[B, 2, 3]``) in one ``affine_grid`` / ``grid_sample`` call; area sampled from outside the
    image is filled with ``fill`` (FixMatch fills with gray 128). ``mode``: "bilinear" or
    "nearest" (PIL's default)."""
    b, c, h, w = x.shape
    to_norm = torch.tensor(
        [[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]],
        dtype=x.dtype,
        device=x.device,
    )
    to_pix = torch.tensor(
        [[w / 2.0, 0.0, w / 2.0], [0.0, h / 2.0, h / 2.0], [0.0, 0.0, 1.0]],
        dtype=x.dtype,
        device=x.device,
    )
    if matrix.shape[-2] == 2:
        matrix = torch.cat([matrix, _eye(x)[:, 2:]], dim=1)
    theta = (to_norm @ matrix.to(x.dtype) @ to_pix)[:, :2]
    grid = F.affine_grid(theta, [b, c + 1, h, w], align_corners=False)
    ones = torch.ones(b, 1, h, w, dtype=x.dtype, device=x.device)
    sampled = F.grid_sample(
        torch.cat([x, ones], dim=1), grid, mode=mode, padding_mode="zeros", align_corners=False
    )
    img, weight = sampled[:, :c], sampled[:, c:]
    return (img + (1.0 - weight) * fill).clamp_(0.0, 1.0)


def rotate(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """Rotate: counter-clockwise by ``magnitude`` degrees about the centre, gray fill."""
    return warp_affine(x, rotation_matrix(x, magnitude), fill)


def shear_x(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """ShearX: ``x_in = x_out + magnitude * y_out`` (PIL's affine shear), gray fill."""
    return warp_affine(x, shear_matrix(x, magnitude, "x"), fill)


def shear_y(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """ShearY: ``y_in = y_out + magnitude * x_out`` (PIL's affine shear), gray fill."""
    return warp_affine(x, shear_matrix(x, magnitude, "y"), fill)


def translate_x(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """TranslateX: move the content ``magnitude`` pixels to the right (negative: left)."""
    return warp_affine(x, translation_matrix(x, magnitude, "x"), fill)


def translate_y(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """TranslateY: move the content ``magnitude`` pixels down (negative: up)."""
    return warp_affine(x, translation_matrix(x, magnitude, "y"), fill)


def cutout(x: torch.Tensor, boxes: torch.Tensor, fill: float = 0.5) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017, as in FixMatch): fill one box per image with ``fill``.

    ``boxes`` is an integer ``[B, 4]`` tensor of ``(top, bottom, left, right)`` with exclusive
    bottom / right, already clipped to the image; an empty box leaves its image unchanged.
    """
    h, w = x.shape[-2:]
    boxes = boxes.to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    t, b_, l, r = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (rows >= t) & (rows < b_) & (cols >= l) & (cols < r)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, fill), x)
