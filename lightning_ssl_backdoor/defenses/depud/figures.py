"""DePuD figures (matplotlib, Agg; every file written atomically).

- :func:`score_histograms`: the detector's output distribution on labeled, clean unlabeled and
  poisoned images (the view of Yan et al.'s Fig. 9);
- :func:`gradcam_overlays`: clean vs poisoned unlabeled images with their Grad-CAM confidence masks
  on top (the view of Fig. 10).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.report.figures import plt, save_figure

COLORS = ("tab:blue", "tab:green", "tab:red", "tab:orange", "tab:purple", "tab:gray")


def score_histograms(
    groups: Mapping[str, torch.Tensor],
    path: str | Path,
    bins: int = 40,
    title: Optional[str] = None,
) -> Path:
    """One density histogram per named group of scores in [0, 1] (empty groups are left out)."""
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}.")
    shown = {k: torch.as_tensor(v).float().reshape(-1) for k, v in groups.items() if torch.as_tensor(v).numel()}
    if not shown:
        raise ConfigError("score_histograms needs at least one non-empty group of scores.")
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    edges = torch.linspace(0.0, 1.0, bins + 1).numpy()
    for (name, s), color in zip(shown.items(), COLORS * (1 + len(shown) // len(COLORS))):
        ax.hist(s.clamp(0, 1).numpy(), bins=edges, density=True, alpha=0.45, color=color,
                label=f"{name} (n={s.numel()}, mean {s.mean():.2f})")
    ax.set_xlabel("detector score P(untrusted)")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(title or "DePuD poison detector: score distributions", fontsize=9)
    return save_figure(fig, Path(path))


def _show(ax, img: torch.Tensor) -> None:
    im = img.permute(1, 2, 0).clamp(0, 1).numpy()
    if im.shape[-1] == 1:
        ax.imshow(im[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(im, interpolation="nearest")
    ax.axis("off")


def gradcam_overlays(
    clean_images: torch.Tensor,
    clean_masks: torch.Tensor,
    poison_images: torch.Tensor,
    poison_masks: torch.Tensor,
    path: str | Path,
    clean_scores: Optional[torch.Tensor] = None,
    poison_scores: Optional[torch.Tensor] = None,
) -> Path:
    """Rows: clean images, their masks over them, poisoned images, their masks over them.

    Images: float [0, 1] ``[n, C, H, W]``; masks: float [0, 1] ``[n, H, W]``; optional detector
    scores are printed above the images."""
    pairs = [("clean", clean_images, clean_masks, clean_scores), ("poisoned", poison_images, poison_masks, poison_scores)]
    for name, imgs, masks, _ in pairs:
        if len(imgs) != len(masks):
            raise ConfigError(f"{name} images ({len(imgs)}) and masks ({len(masks)}) differ in number.")
    n = max(len(clean_images), len(poison_images))
    if n == 0:
        raise ConfigError("gradcam_overlays needs at least one image.")
    fig, axes = plt.subplots(4, n, figsize=(1.25 * n, 5.4), squeeze=False)
    for r, (name, imgs, masks, scores) in enumerate(pairs):
        for j in range(n):
            top, bottom = axes[2 * r][j], axes[2 * r + 1][j]
            top.axis("off")
            bottom.axis("off")
            if j >= len(imgs):
                continue
            _show(top, imgs[j].float())
            head = f"{name}: " if j == 0 else ""
            top.set_title(head + (f"{float(scores[j]):.2f}" if scores is not None else ""), fontsize=7)
            _show(bottom, imgs[j].float())
            bottom.imshow(masks[j].float().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            if j == 0:
                bottom.set_title("Grad-CAM mask", fontsize=7)
    fig.suptitle("DePuD Grad-CAM confidence masks (class 1: untrusted), detector scores above", fontsize=9)
    return save_figure(fig, Path(path))
