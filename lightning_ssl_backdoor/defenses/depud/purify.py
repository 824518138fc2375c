"""DePuD stage 2: purification of the unlabeled images inside SSL training (Sec. V-C, Eq. 24-26).

With ``m`` the image's Grad-CAM confidence mask in [0, 1] (per pixel, shared by the channels),
``p`` the mean pixel value (per channel) and ``eps ~ N(0, sigma^2)`` drawn per pixel and channel:

- ``oc``   (Eq. 24): ``m * p + (1 - m) * u``
- ``dp``   (Eq. 25): ``clip(u + eps * m, 0, 1)``
- ``ocdp`` (Eq. 26): ``clip((1 - m) * u + m * p + eps * m, 0, 1)``

:func:`purified` turns ANY :class:`~lightning_ssl_backdoor.ssl.base.SSLModule` subclass into one
whose training batches have every sampled unlabeled image purified (fresh noise at every sampling)
before the algorithm's weak / strong views are built from it; everything else (losses, evaluation,
EMA, checkpoints) is the algorithm's own. The masks live in a file written by :func:`save_masks`
(``masks_path``, an init argument, so it is part of the hyperparameters and survives checkpoint
resume); ``setup`` loads them into a non-persistent uint8 buffer on the device, checks that they
belong to the data module's unlabeled set, and each batch looks its masks up by ``idx``.
The purified image is quantised back to uint8 (the batch contract of the base class) before the
base class converts it and builds the views.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lightning_ssl_backdoor.data.artifacts import load_arrays, save_arrays, sha256_array
from lightning_ssl_backdoor.data.imageset import quantize
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.ssl import ALGORITHMS
from lightning_ssl_backdoor.ssl.base import SSLModule

MODES = ("oc", "dp", "ocdp")
MASKS_FORMAT = "depud-masks-v1"


def purify(
    x: torch.Tensor,
    masks: torch.Tensor,
    mode: str,
    mean: torch.Tensor,
    sigma: float = 100.0 / 255.0,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Purify float [0, 1] images ``x`` ``[B, C, H, W]`` with masks ``[B, H, W]`` (or ``[B, 1, H, W]``)
    in [0, 1] by Eq. 24 (``oc``), 25 (``dp``) or 26 (``ocdp``). ``mean``: per-channel mean pixel
    ``[C]``; ``noise``: standard normal draws shaped like ``x`` (drawn here when ``None``)."""
    if mode not in MODES:
        raise ConfigError(f"purification mode must be one of {list(MODES)}, got {mode!r}.")
    if sigma < 0:
        raise ConfigError(f"purification sigma must be >= 0, got {sigma}.")
    m = masks.unsqueeze(1) if masks.ndim == 3 else masks
    if m.shape[0] != x.shape[0] or m.shape[-2:] != x.shape[-2:]:
        raise ConfigError(f"masks {tuple(masks.shape)} do not match images {tuple(x.shape)}.")
    m = m.to(x.dtype)
    out = x
    if mode in ("oc", "ocdp"):
        p = mean.to(x).view(1, -1, 1, 1)
        out = m * p + (1.0 - m) * out
    if mode in ("dp", "ocdp"):
        eps = torch.randn_like(x) if noise is None else noise.to(x)
        out = (out + float(sigma) * eps * m).clamp(0.0, 1.0)
    return out


# --------------------------------------------------------------------------- mask files
def save_masks(
    path: str | Path,
    masks: torch.Tensor,
    mean: torch.Tensor,
    unlabeled_images: torch.Tensor,
    scores: Optional[torch.Tensor] = None,
    meta: Optional[dict] = None,
) -> Path:
    """Write the purification masks (uint8 ``[N, H, W]``, aligned with the unlabeled set), the
    per-channel mean pixel and optionally the detector scores as an ``.npz`` artifact whose
    manifest records the sha256 of the unlabeled images they belong to."""
    masks = torch.as_tensor(masks)
    if masks.dtype != torch.uint8 or masks.ndim != 3:
        raise ConfigError("masks must be a uint8 [N, H, W] tensor (round(255 * mask)).")
    if len(masks) != len(unlabeled_images) or masks.shape[1:] != unlabeled_images.shape[-2:]:
        raise ConfigError(
            f"masks {tuple(masks.shape)} must have one [H, W] map per unlabeled image {tuple(unlabeled_images.shape)}."
        )
    arrays = {"masks": masks, "mean": torch.as_tensor(mean, dtype=torch.float32).reshape(-1)}
    if scores is not None:
        arrays["scores"] = torch.as_tensor(scores, dtype=torch.float32)
    info = {"format": MASKS_FORMAT, "unlabeled_sha256": sha256_array(np.asarray(unlabeled_images.numpy())),
            **(meta or {})}
    return save_arrays(path, arrays, info)


def load_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_masks` (hashes checked): arrays as tensors, and its meta."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"purification masks {path} do not exist; run the DePuD defense to create them.")
    arrays, meta = load_arrays(path)
    if meta.get("format") != MASKS_FORMAT:
        raise ConfigError(f"{path} is not a DePuD mask file (format {meta.get('format')!r}).")
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, meta


# ------------------------------------------------------------------- module mix-in
class PurificationMixin:
    """Purifies each sampled unlabeled image before the host algorithm builds its views.

    Args (added to the host's): ``purify_mode`` (``oc``, ``dp`` or ``ocdp``), ``sigma`` (noise
    standard deviation in [0, 1] pixel units; 100/255 by default), ``masks_path`` (file written by
    :func:`save_masks`).
    """

    def __init__(
        self,
        *,
        purify_mode: str = "ocdp",
        sigma: float = 100.0 / 255.0,
        masks_path: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if purify_mode not in MODES:
            raise ConfigError(f"purify_mode must be one of {list(MODES)}, got {purify_mode!r}.")
        if sigma < 0:
            raise ConfigError(f"sigma must be >= 0, got {sigma}.")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.register_buffer("_purify_masks", torch.zeros(0, 0, 0, dtype=torch.uint8), persistent=False)
        self.register_buffer("_purify_mean", torch.zeros(0), persistent=False)

    # ---- masks
    def set_purification(self, masks: torch.Tensor, mean: torch.Tensor) -> None:
        """Install uint8 masks ``[N, H, W]`` (aligned with the unlabeled set) and the mean pixel."""
        masks = torch.as_tensor(masks)
        if masks.dtype != torch.uint8 or masks.ndim != 3:
            raise ConfigError("purification masks must be a uint8 [N, H, W] tensor.")
        self._purify_masks = masks.to(self._purify_masks.device)
        self._purify_mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1).to(self._purify_mean.device)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # type: ignore[misc]
        path = self.hparams.masks_path
        if path is None:
            if self._purify_masks.numel() == 0:
                raise ConfigError("a purified SSL module needs masks_path (a DePuD mask file) or set_purification().")
            return
        arrays, meta = load_masks(path)
        dm = getattr(self.trainer, "datamodule", None)
        split = getattr(dm, "split", None)
        if split is not None:
            if len(split.unlabeled) != len(arrays["masks"]) or \
                    sha256_array(split.unlabeled.images.numpy()) != meta.get("unlabeled_sha256"):
                raise ConfigError(f"the masks in {path} were made for a different unlabeled set than this data module's.")
        self.set_purification(arrays["masks"], arrays["mean"])

    # ---- batches
    def purify_unlabeled(self, x_uint8: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Purified uint8 copies of the unlabeled images ``x_uint8`` at unlabeled positions ``idx``."""
        if self._purify_masks.numel() == 0:
            raise ConfigError("purification masks are not loaded: call setup() or set_purification() first.")
        m = self._purify_masks[idx.to(self._purify_masks.device)].to(x_uint8.device).float().div_(255.0)
        x = x_uint8.float().div(255.0)
        out = purify(x, m, self.hparams.purify_mode, self._purify_mean, float(self.hparams.sigma))
        return quantize(out)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "labeled" in batch and batch.get("unlabeled") is not None \
                and self.uses_unlabeled:
            # restore a resumed run's RNG before drawing noise, so resumes stay exact
            self._restore_rng_if_resumed()
            unl = dict(batch["unlabeled"])
            unl["x"] = self.purify_unlabeled(unl["x"], unl["idx"])
            batch = {**batch, "unlabeled": unl}
        return super().on_after_batch_transfer(batch, dataloader_idx)  # type: ignore[misc]


_PURIFIED: dict[type, type] = {}


def purified(cls: type) -> type:
    """The subclass of SSL algorithm ``cls`` that purifies its unlabeled images (cached: the same
    class object for the same ``cls``), importable as ``purified_class_path(cls)``."""
    if not isinstance(cls, type) or not issubclass(cls, SSLModule):
        raise ConfigError(f"purified() needs an SSLModule subclass, got {cls!r}.")
    if issubclass(cls, PurificationMixin):
        return cls
    if cls in _PURIFIED:
        return _PURIFIED[cls]
    name = f"Purified{cls.__name__}"
    module = sys.modules[__name__]
    if name in vars(module):
        raise ConfigError(
            f"cannot name the purified {cls.__module__}.{cls.__qualname__} {name}: another class took that name."
        )
    new = type(name, (PurificationMixin, cls), {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{cls.__name__} with DePuD purification of its unlabeled images (see {__name__}).",
    })
    _PURIFIED[cls] = new
    setattr(module, name, new)
    return new


def purified_class_path(cls: type) -> str:
    """Dotted path of ``purified(cls)`` for ``Spec`` / ``resolve_algorithm``."""
    return f"{__name__}.{purified(cls).__name__}"


def __getattr__(name: str) -> type:
    # ``PurifiedFixMatch`` etc. resolve in a fresh process for every algorithm in ssl.ALGORITHMS.
    if name.startswith("Purified"):
        base = name[len("Purified"):]
        for cls in ALGORITHMS.values():
            if cls.__name__ == base:
                return purified(cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
