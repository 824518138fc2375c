"""Per-sample RandAugment + Cutout: the strong augmentation of FixMatch.

Implements the ``RandAugmentMC`` policy used by FixMatch (Sohn et al., 2020, "FixMatch:
Simplifying Semi-Supervised Learning with Consistency and Confidence", Sec. 2.3 and Table 12),
batched on the device: every image draws its own ``n`` operations and magnitudes, yet the work is
done by one batched call per (slot, operation) on the images that drew it, and all geometric
operations of a slot share a single warp. The operations are Kornia's functional ops called with
per-sample magnitudes (see :mod:`lightning_ssl_backdoor.augment.ops`); Kornia's own
``kornia.augmentation.auto.RandAugment`` is not used because it draws one set of operations per
batch, not per image.

Two ways to apply the same draws give the same pixels (to float rounding): ``mode="grouped"`` (the
least arithmetic: each op on the images that drew it, found with ``nonzero``: a host
synchronisation and data-dependent shapes per op) and ``mode="masked"``
(:mod:`~lightning_ssl_backdoor.augment.masked`: every op family on the whole batch under per-sample
masks: no synchronisation, static shapes, one compilable graph). ``mode="auto"`` (default) takes
the masked form on an accelerator or under ``torch.compile`` and the grouped one on a CPU, where
the masked form's extra arithmetic costs more than the dispatch it saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from lightning_ssl_backdoor.augment import ops as F
from lightning_ssl_backdoor.augment.masked import apply_masked, op_features
from lightning_ssl_backdoor.errors import ConfigError

#: The 14 operations of FixMatch's RandAugment pool, in a fixed order (indices in ``StrongParams``).
OPS: tuple[str, ...] = (
    "AutoContrast",
    "Brightness",
    "Color",
    "Contrast",
    "Equalize",
    "Identity",
    "Posterize",
    "Rotate",
    "Sharpness",
    "ShearX",
    "ShearY",
    "Solarize",
    "TranslateX",
    "TranslateY",
)

#: Functional form of each operation: ``fn(x, magnitude_per_sample) -> x``.
FUNCTIONS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "AutoContrast": F.auto_contrast,
    "Brightness": F.brightness,
    "Color": F.color,
    "Contrast": F.contrast,
    "Equalize": F.equalize,
    "Identity": F.identity,
    "Posterize": F.posterize,
    "Rotate": F.rotate,
    "Sharpness": F.sharpness,
    "ShearX": F.shear_x,
    "ShearY": F.shear_y,
    "Solarize": F.solarize,
    "TranslateX": F.translate_x,
    "TranslateY": F.translate_y,
}

_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
#: ways to apply drawn parameters (see the module doc)
MODES = ("auto", "grouped", "masked")
_SIGNED = _GEOMETRIC


def op_magnitude(
    name: str, level: torch.Tensor, m: float, height: int, width: int
) -> torch.Tensor:
    """Map RandAugment levels ``level`` (in [1, m], one per image) of operation ``name`` to the
    natural magnitude its functional op takes (unsigned; geometric ops get a random sign apart).

    The table of FixMatch's ``fixmatch_augment_pool`` (``r = level / m``):

    ============================ ===================================== ===================
    operation                    magnitude                             range at m = 10
    ============================ ===================================== ===================
    Brightness, Color, Contrast, enhancement factor ``0.9 r + 0.05``   [0.14, 0.95]
    Sharpness
    Posterize                    bits kept ``4 + floor(4 r)``          4 .. 8
    Rotate                       degrees ``30 r``                      [3, 30], +-
    ShearX, ShearY               shear factor ``0.3 r``                [0.03, 0.3], +-
    Solarize                     threshold ``(256 - 256 r) / 255``     pixels >= T invert
    TranslateX / TranslateY      pixels ``0.3 r * width / height``     [0.96, 9.6] px, +-
    AutoContrast, Equalize,      none (0)
    Identity
    ============================ ===================================== ===================
    """
    r = level / m
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return 0.9 * r + 0.05
    if name == "Posterize":
        return 4.0 + torch.floor(4.0 * r)
    if name == "Rotate":
        return 30.0 * r
    if name in ("ShearX", "ShearY"):
        return 0.3 * r
    if name == "Solarize":
        return (256.0 - 256.0 * r) / 255.0
    if name == "TranslateX":
        return 0.3 * r * width
    if name == "TranslateY":
        return 0.3 * r * height
    return torch.zeros_like(level)


def _geometric_matrix(name: str, x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    if name == "Rotate":
        return F.rotation_matrix(x, magnitude)
    if name in ("ShearX", "ShearY"):
        return F.shear_matrix(x, magnitude, name[-1].lower())
    return F.translation_matrix(x, magnitude, name[-1].lower())


@dataclass
class StrongParams:
    """Random draws of one ``StrongAugment`` call (``B`` images, ``n`` slots).

    ``ops`` long ``[B, n]`` indices into the module's op list; ``levels`` float ``[B, n]`` in
    [1, m]; ``apply`` bool ``[B, n]`` (each op is applied with probability p); ``signs`` float
    ``[B, n]`` in {-1, +1} (used by the geometric ops); ``boxes`` long ``[B, 4]`` cutout boxes
    ``(top, bottom, left, right)``, exclusive ends, clipped to the image.
    """

    ops: torch.Tensor
    levels: torch.Tensor
    apply: torch.Tensor
    signs: torch.Tensor
    boxes: torch.Tensor


class StrongAugment(nn.Module):
    """FixMatch's strong augmentation, per sample: RandAugmentMC(n, m) followed by Cutout.

    For every image independently: draw ``n`` operations uniformly with replacement from ``ops``
    (default: the 14 of :data:`OPS`), each with its own level ``v ~ U[1, m]`` (continuous; the
    reference implementation draws integers in [1, m)), and apply each with probability ``p``;
    rotations, shears and translations get a random sign and fill with gray 0.5. Then Cutout fills
    one square of side ``round(cutout * min(H, W))`` (16 px on 32 x 32) centred at a uniformly
    random pixel with gray 0.5, clipped at the border (``cutout=0`` disables it). Magnitudes follow
    the table in :func:`op_magnitude`.

    ``forward(x, generator=None)`` takes a float ``[B, C, H, W]`` batch in [0, 1] (C = 1 or 3) on
    any device and returns an augmented batch of the same shape; randomness comes from the global
    torch RNG, or from ``generator`` (which must live on ``x.device``). The draws of the last call
    are kept in ``last_params`` (a :class:`StrongParams`). ``mode``: "auto", "grouped" or "masked"
    (see the module doc; the same pixels either way).
    """

    def __init__(
        self,
        n: int = 2,
        m: float = 10,
        p: float = 0.5,
        cutout: float = 0.5,
        ops: Optional[Sequence[str]] = None,
        fill: float = 0.5,
        mode: str = "auto",
    ) -> None:
        super().__init__()
        if int(n) != n or n < 0:
            raise ConfigError(f"StrongAugment n must be a non-negative integer, got {n!r}.")
        if not m >= 1:
            raise ConfigError(f"StrongAugment m must be at least 1, got {m!r}.")
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"StrongAugment p must be a probability in [0, 1], got {p!r}.")
        if not 0.0 <= cutout <= 1.0:
            raise ConfigError(f"StrongAugment cutout must be a fraction in [0, 1], got {cutout!r}.")
        if mode not in MODES:
            raise ConfigError(f"StrongAugment mode must be one of {list(MODES)}, got {mode!r}.")
        ops = tuple(OPS if ops is None else ops)
        unknown = [o for o in ops if o not in FUNCTIONS]
        if unknown or not ops:
            raise ConfigError(
                f"StrongAugment ops must be a non-empty subset of {list(OPS)}, got unknown "
                f"{unknown or 'empty list'}."
            )
        self.n, self.m, self.p, self.cutout, self.fill = int(n), float(m), float(p), cutout, fill
        self.ops, self.mode = ops, mode
        # the masked form's per-op feature table, on the module's device (not in checkpoints)
        self.register_buffer("op_table", op_features(ops), persistent=False)
        self._compiled = None
        self.last_params: Optional[StrongParams] = None

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, p={self.p}, cutout={self.cutout}, ops={len(self.ops)}"

    def sample_params(
        self,
        batch_size: int,
        height: int,
        width: int,
        device: torch.device | str = "cpu",
        generator: Optional[torch.Generator] = None,
    ) -> StrongParams:
        """Draw the operations, levels, signs and cutout boxes for a batch."""
        b, n = batch_size, self.n
        kw = dict(device=device, generator=generator)
        op_idx = torch.randint(0, len(self.ops), (b, n), **kw)
        levels = 1.0 + (self.m - 1.0) * torch.rand(b, n, **kw)
        apply = torch.rand(b, n, **kw) < self.p
        signs = torch.where(torch.rand(b, n, **kw) < 0.5, -1.0, 1.0)
        side = int(round(self.cutout * min(height, width)))
        cy = torch.randint(0, height, (b,), **kw)
        cx = torch.randint(0, width, (b,), **kw)
        top, left = cy - side // 2, cx - side // 2
        boxes = torch.stack(
            [top.clamp(0, height), (top + side).clamp(0, height),
             left.clamp(0, width), (left + side).clamp(0, width)],
            dim=1,
        )
        if side == 0:
            boxes.zero_()
        return StrongParams(op_idx, levels, apply, signs, boxes)

    def apply_params(self, x: torch.Tensor, params: StrongParams) -> torch.Tensor:
        """Apply drawn parameters deterministically, in the form :meth:`uses_masks` picks (compiled
        after :meth:`compile_apply`); then Cutout."""
        F.check_batch(x)
        fn = self._augment_batch if self._compiled is None else self._compiled
        return fn(x, params.ops, params.levels, params.apply, params.signs, params.boxes)

    def compile_apply(self, backend: str = "inductor") -> None:
        """Compile :meth:`apply_params` with ``torch.compile(fullgraph=True)``: one graph, no break
        (the masked form is taken under compile). The draws stay eager, so a seed gives the draws of
        an eager run; ``backend``: a ``torch.compile`` backend ("inductor", "aot_eager", ...)."""
        self._compiled = torch.compile(self._augment_batch, backend=backend, fullgraph=True, dynamic=False)

    def _augment_batch(self, x: torch.Tensor, ops: torch.Tensor, levels: torch.Tensor, apply: torch.Tensor,
               signs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.uses_masks(x):
            out = apply_masked(x, self.op_table.to(x.device), self.m, ops, levels, apply, signs, self.fill)
            if self.cutout > 0:
                return out.masked_fill(F.cutout_mask(boxes.to(x.device), h, w), self.fill)
            return out.clone() if ops.shape[1] == 0 else out
        # grouped: slot by slot, each op type on the images that drew it (one batched call), the
        # geometric ones together in one warp
        out = x.clone()
        for slot in range(ops.shape[1]):
            chosen = torch.where(apply[:, slot], ops[:, slot], -1)
            slot_levels = levels[:, slot].to(x.dtype)
            geo_idx, geo_mats = [], []
            for k, name in enumerate(self.ops):
                idx = (chosen == k).nonzero().view(-1)
                if idx.numel() == 0 or name == "Identity":
                    continue
                mag = op_magnitude(name, slot_levels[idx], self.m, h, w)
                if name in _GEOMETRIC:
                    mag = mag * signs[idx, slot].to(x.dtype)
                    geo_idx.append(idx)
                    geo_mats.append(_geometric_matrix(name, out[idx], mag))  # Kornia's convention
                else:
                    out[idx] = FUNCTIONS[name](out[idx], mag)
            if geo_idx:
                idx = torch.cat(geo_idx)
                out[idx] = F.warp(out[idx], torch.cat(geo_mats), fill=self.fill)
        if self.cutout > 0:  # in place on our own copy: F.cutout without its second allocation
            out.masked_fill_(F.cutout_mask(boxes.to(x.device), h, w), self.fill)
        return out

    def uses_masks(self, x: torch.Tensor) -> bool:
        """Whether :meth:`apply_params` takes the static-shape (masked) form for ``x``."""
        if self.mode != "auto":
            return self.mode == "masked"
        return x.device.type != "cpu" or torch.compiler.is_compiling()

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        F.check_batch(x)
        b, _, h, w = x.shape
        params = self.sample_params(b, h, w, device=x.device, generator=generator)
        self.last_params = params
        return self.apply_params(x, params)
