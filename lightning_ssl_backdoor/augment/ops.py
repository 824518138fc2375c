"""Batched image operations with one magnitude per sample, on Kornia's functional ops.

Every function takes a float batch ``x`` of shape ``[B, C, H, W]`` (C = 1 or 3) with values in
[0, 1] and, where the operation has a strength, a tensor ``magnitude`` of shape ``[B]`` (a Python
number is broadcast to every image) in the operation's natural unit (an enhancement factor, a
number of bits, degrees, a shear factor, pixels, a threshold). The result has the input's shape,
dtype and device and lies in [0, 1].

The semantics follow the PIL operations that FixMatch's RandAugmentMC calls (Sohn et al., 2020,
"FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence", Table 12), and
each is computed by the Kornia (0.9) function that reproduces that PIL operation:

=============  =================================================================  ===============
operation      Kornia function                                                    vs PIL (uint8)
=============  =================================================================  ===============
Brightness     ``kornia.enhance.adjust_brightness_accumulative`` (``x * f``)      <= 2/255
Color          ``kornia.enhance.adjust_saturation_with_gray_subtraction``         <= 2/255
Contrast       ``kornia.enhance.adjust_contrast_with_mean_subtraction``           <= 2/255
Sharpness      ``kornia.enhance.sharpness`` (PIL's SMOOTH kernel, borders kept)   <= 2/255
AutoContrast   ``kornia.enhance.normalize_min_max`` (``eps=0``)                   <= 1/255
Equalize       ``kornia.enhance.equalize``                                        exact
Posterize      ``kornia.enhance.posterize``                                       exact
Solarize       ``kornia.enhance.solarize``                                        exact
Rotate, Shear  ``kornia.geometry.transform.warp_affine`` (``padding_mode="fill"``)
Translate      with ``get_rotation_matrix2d`` / ``get_shear_matrix2d`` /
               ``get_translation_matrix2d``
Cutout         a box mask from comparisons (``bbox_to_mask``'s semantics)
grayscale      ``kornia.color.rgb_to_grayscale`` (ITU-R 601-2 luma, PIL's "L")
=============  =================================================================  ===============

The "vs PIL" column is the largest difference the tests allow on 8-bit images: PIL rounds or
truncates to uint8 after each operation, Kornia stays in float. Kornia matched PIL in every one of
the 14 operations, so no operation is hand-written; what remains here is glue, each piece there
because Kornia's function differs from PIL in one documented way:

- AutoContrast: ``normalize_min_max`` maps a constant channel to 0 and adds ``eps`` to the range;
  PIL leaves a constant channel as it is and divides by the exact range, so ``eps=0`` and constant
  channels are put back.
- Equalize, Posterize: Kornia reads the 8-bit level of a pixel as ``trunc(255 x)``; PIL images hold
  ``round(255 x)``, so pixels are rounded to the 256 levels first (a no-op on 8-bit images).
- Sharpness: Kornia needs images of at least 3 x 3; smaller ones (PIL's filter has no interior
  there) are returned unchanged.
- Geometric ops: the public :func:`warp_affine` keeps this module's matrix convention (output to
  input, pixel corners at integers); the matrices of the built-in ops are Kornia's (input to output,
  pixel centres at integers) and go to Kornia unchanged.

One-channel images: every operation works on them and returns one channel. The colour operations
act on the single channel as PIL does on an "L" image: Brightness, Contrast (blend with the mean,
which is the mean luma), AutoContrast, Equalize, Posterize, Solarize and Sharpness act on it, and
Color is the identity (a grey image has no saturation to change). Each equals the same operation on
the grey image copied into three RGB channels (tests/test_augment.py checks this for all 14).
"""

from __future__ import annotations

import math
from typing import Union

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
    normalize_min_max,
)
from kornia.enhance import equalize as _k_equalize
from kornia.enhance import posterize as _k_posterize
from kornia.enhance import sharpness as _k_sharpness
from kornia.enhance import solarize as _k_solarize
from kornia.geometry.transform import (
    get_rotation_matrix2d,
    get_shear_matrix2d,
    get_translation_matrix2d,
)
from kornia.geometry.transform import warp_affine as _k_warp_affine

from lightning_ssl_backdoor.errors import DataFormatError

Magnitude = Union[torch.Tensor, float, int]


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


def per_sample(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Magnitude as a float tensor of shape ``[B]`` in ``x``'s dtype and device."""
    m = torch.as_tensor(magnitude, dtype=x.dtype, device=x.device)
    if m.ndim == 0:
        m = m.expand(x.shape[0])
    if m.shape != (x.shape[0],):
        raise DataFormatError(
            f"magnitude must be a number or have shape [{x.shape[0]}], got {tuple(m.shape)}."
        )
    return m


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Round to the 256 levels of an 8-bit image (``round(255 x) / 255``), as PIL holds pixels."""
    return (x * 255.0).round_().clamp_(0.0, 255.0).div_(255.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``[B, 1, H, W]`` of an RGB batch (``kornia.color.rgb_to_grayscale``, PIL's "L"
    weights 0.299 / 0.587 / 0.114); a 1-channel batch is returned as it is."""
    return x if x.shape[1] == 1 else rgb_to_grayscale(x)


def identity(x: torch.Tensor, magnitude: Magnitude = 0.0) -> torch.Tensor:
    """Identity: the batch unchanged (a copy); ``magnitude`` is ignored."""
    return x.clone()


def auto_contrast(x: torch.Tensor, magnitude: Magnitude = 0.0) -> torch.Tensor:
    """AutoContrast: stretch each channel of each image so its minimum is 0 and maximum 1
    (``normalize_min_max`` with ``eps=0``); a constant channel is left unchanged, as PIL's
    ``ImageOps.autocontrast`` (no cut-off) does."""
    span = x.amax(dim=(2, 3), keepdim=True) - x.amin(dim=(2, 3), keepdim=True)
    flat = span <= 0  # no early return on an all-flat batch: bool() would wait for the device
    stretched = normalize_min_max(x, 0.0, 1.0, eps=0.0)  # NaN on flat channels, replaced below
    return torch.where(flat, x, stretched).clamp_(0.0, 1.0)


def equalize(x: torch.Tensor, magnitude: Magnitude = 0.0) -> torch.Tensor:
    """Equalize: per-image, per-channel histogram equalisation on 256 levels, PIL's
    ``ImageOps.equalize`` (``kornia.enhance.equalize`` on the pixels rounded to 8-bit levels).

    With ``h`` a channel's histogram, ``N`` its pixel count and ``h_last`` the count of its largest
    level, ``step = (N - h_last) // 255`` and level ``i`` maps to ``(step // 2 + sum(h[:i])) //
    step``; channels with ``step == 0`` (near-constant) keep their (rounded) values, as in PIL.
    """
    return _k_equalize(to_levels(x))


def brightness(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Brightness: blend with a black image by factor ``magnitude`` (1 = unchanged, 0 = black)."""
    return adjust_brightness_accumulative(x, per_sample(x, magnitude))


def color(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Color (saturation): blend with the image's luma; identity on 1-channel images."""
    if x.shape[1] == 1:
        return x.clone()
    return adjust_saturation_with_gray_subtraction(x, per_sample(x, magnitude))


def contrast(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Contrast: blend with a constant image at the mean luma of each image (0 = flat gray)."""
    return adjust_contrast_with_mean_subtraction(x, per_sample(x, magnitude))


def sharpness(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Sharpness: blend with a smoothed copy (PIL's SMOOTH 3x3 kernel, weights 1 and centre 5,
    over 13); border pixels of the smoothed copy keep their original values, as in PIL. Images
    smaller than 3 x 3 have no interior to smooth and are returned unchanged."""
    if min(x.shape[-2:]) < 3:
        return x.clone()
    return _k_sharpness(x, per_sample(x, magnitude))


def posterize(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Posterize: keep the ``magnitude`` (integer 0..8) highest bits of each 8-bit level."""
    bits = per_sample(x, magnitude).round().clamp(0, 8).long()
    return _k_posterize(to_levels(x), bits)


def solarize(x: torch.Tensor, magnitude: Magnitude) -> torch.Tensor:
    """Solarize: invert (``1 - x``) every pixel with ``x >= magnitude`` (a threshold in [0, 1])."""
    return _k_solarize(x, per_sample(x, magnitude)).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Geometric operations. The matrix builders return Kornia's convention: [B, 3, 3] matrices that map
# INPUT pixel coordinates to OUTPUT ones, with pixel centres at integer coordinates (pixel (i, j) is
# at x = j, y = i), x to the right and y down. PIL's affine transforms use pixel corners instead
# (pixel (i, j) covers [j, j+1] x [i, i+1]); the shears below account for the half-pixel shift.
# ----------------------------------------------------------------------------------------------


def rotation_matrix(x: torch.Tensor, degrees: Magnitude) -> torch.Tensor:
    """Input-to-output matrices rotating each image counter-clockwise (as displayed) by
    ``degrees`` about its centre, like ``PIL.Image.rotate`` (``get_rotation_matrix2d``)."""
    angle = per_sample(x, degrees)
    h, w = x.shape[-2:]
    center = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=x.dtype, device=x.device)
    scale = torch.ones(x.shape[0], 2, dtype=x.dtype, device=x.device)
    m = get_rotation_matrix2d(center.expand(x.shape[0], 2), angle, scale)
    return torch.cat([m, _last_row(x)], dim=1)


def shear_matrix(x: torch.Tensor, factor: Magnitude, axis: str) -> torch.Tensor:
    """Input-to-output matrices of PIL's shear about the top-left image corner: output pixel
    ``(x, y)`` reads input ``(x + factor * y, y)`` for axis "x", ``(x, y + factor * x)`` for "y"
    (PIL's corner coordinates). ``get_shear_matrix2d`` takes the angle ``atan(factor)`` about that
    corner, which is ``(-0.5, -0.5)`` in Kornia's centre coordinates."""
    angle = torch.atan(per_sample(x, factor))
    corner = torch.full((x.shape[0], 2), -0.5, dtype=x.dtype, device=x.device)
    if axis == "x":
        return get_shear_matrix2d(corner, sx=angle, sy=torch.zeros_like(angle))
    return get_shear_matrix2d(corner, sx=torch.zeros_like(angle), sy=angle)


def translation_matrix(x: torch.Tensor, pixels: Magnitude, axis: str) -> torch.Tensor:
    """Input-to-output matrices that move the content by ``pixels`` to the right (axis "x") or
    down (axis "y"); negative values move it left / up (``get_translation_matrix2d``)."""
    t = per_sample(x, pixels)
    zero = torch.zeros_like(t)
    return get_translation_matrix2d(torch.stack([t, zero] if axis == "x" else [zero, t], dim=1))


def _last_row(x: torch.Tensor) -> torch.Tensor:
    row = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=x.dtype, device=x.device)
    return row.expand(x.shape[0], 1, 3)


def warp(x: torch.Tensor, matrix: torch.Tensor, fill: float = 0.5, mode: str = "bilinear") -> torch.Tensor:
    """Resample each image with its own input-to-output matrix (Kornia's convention, ``[B, 3, 3]``
    or ``[B, 2, 3]``) in one ``kornia.geometry.transform.warp_affine`` call; area sampled from
    outside the image is filled with ``fill`` (FixMatch fills with gray 128), blended at the border
    by the warped coverage as in Kornia's ``padding_mode="fill"``."""
    fill_value = torch.tensor([fill], dtype=x.dtype, device=x.device)
    out = _k_warp_affine(
        x, matrix[:, :2].to(x.dtype), x.shape[-2:], mode=mode, padding_mode="fill",
        align_corners=True, fill_value=fill_value,
    )
    return out.clamp_(0.0, 1.0)


def warp_affine(
    x: torch.Tensor, matrix: torch.Tensor, fill: float = 0.5, mode: str = "bilinear"
) -> torch.Tensor:
    """Resample each image with its own OUTPUT-to-INPUT matrix ``[B, 3, 3]`` (or ``[B, 2, 3]``)
    in PIL's pixel-corner coordinates (the matrix PIL's ``Image.transform(AFFINE)`` takes); area
    sampled from outside the image is filled with ``fill``. ``mode``: "bilinear" or "nearest"
    (PIL's default). The matrix is inverted and moved to pixel centres for :func:`warp`."""
    if matrix.shape[-2] == 2:
        matrix = torch.cat([matrix, _last_row(x)[: matrix.shape[0]]], dim=1)
    m = matrix.to(torch.float64)
    half = torch.eye(3, dtype=m.dtype, device=m.device)
    half[:2, 2] = 0.5  # centre coordinates -> corner coordinates
    to_centre = torch.linalg.inv(half)
    return warp(x, (to_centre @ torch.linalg.inv(m) @ half).to(x.dtype), fill, mode)


def rotate(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """Rotate: counter-clockwise by ``magnitude`` degrees about the centre, gray fill."""
    return warp(x, rotation_matrix(x, magnitude), fill)


def shear_x(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """ShearX: ``x_in = x_out + magnitude * y_out`` (PIL's affine shear), gray fill."""
    return warp(x, shear_matrix(x, magnitude, "x"), fill)


def shear_y(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """ShearY: ``y_in = y_out + magnitude * x_out`` (PIL's affine shear), gray fill."""
    return warp(x, shear_matrix(x, magnitude, "y"), fill)


def translate_x(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """TranslateX: move the content ``magnitude`` pixels to the right (negative: left)."""
    return warp(x, translation_matrix(x, magnitude, "x"), fill)


def translate_y(x: torch.Tensor, magnitude: Magnitude, fill: float = 0.5) -> torch.Tensor:
    """TranslateY: move the content ``magnitude`` pixels down (negative: up)."""
    return warp(x, translation_matrix(x, magnitude, "y"), fill)


def cutout_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bool ``[B, 1, H, W]`` mask of one box per image; ``boxes`` as in :func:`cutout` (the
    rectangle ``top <= row < bottom``, ``left <= col < right``, as Kornia's ``bbox_to_mask`` of the
    inclusive corners in ``RandomErasing``). Comparisons against ``arange``: no data-dependent shape."""
    t, b, l, r = boxes.unbind(1)
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows >= t.view(-1, 1)) & (rows < b.view(-1, 1))
    in_cols = (cols >= l.view(-1, 1)) & (cols < r.view(-1, 1))
    return (in_rows.view(-1, 1, height, 1) & in_cols.view(-1, 1, 1, width))


def cutout(x: torch.Tensor, boxes: torch.Tensor, fill: float = 0.5) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017, as in FixMatch): fill one box per image with ``fill``.

    ``boxes`` is an integer ``[B, 4]`` tensor of ``(top, bottom, left, right)`` with exclusive
    bottom / right, already clipped to the image; an empty box leaves its image unchanged.
    """
    return x.masked_fill(cutout_mask(boxes.to(x.device), *x.shape[-2:]), fill)
