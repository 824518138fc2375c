"""``defense: clustering``: agglomerative clustering of the unlabeled set (Carlini 2021, Sec. 5.2).

Interpolation poisons are close to each other in pixel space, so single-linkage clustering puts them
in one tight cluster; removing the largest suspicious cluster removes the attack.
:func:`~lightning_ssl_backdoor.defenses.clustering.cluster_detect` does the clustering on the
unlabeled pixels (``space: pixels``, the paper's setting) or on the penultimate features of a model
trained on the attacked split through the runner's ``ctx.train`` (``space: features``; the model's
features of every unlabeled image are stored in ``features/features.npz`` and reused). The runner then
retrains the row's algorithm on what is kept. ``defense_info``: AUROC, precision, recall and FPR
of the flagged set against the poison mask, the cut distance and the flagged cluster sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from lightning_ssl_backdoor._lightning import pl
import torch

from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.data.artifacts import load_arrays, save_arrays
from lightning_ssl_backdoor.defenses.base import DataDefense, DefenseContext, register_defense
from lightning_ssl_backdoor.defenses.clustering import cluster_detect
from lightning_ssl_backdoor.defenses.influence_defense import detection_info, filter_unlabeled, poison_mask_of
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["ClusteringDefense", "FeatureSnapshot"]

SPACES = ("pixels", "features")


class FeatureSnapshot(pl.Callback):
    """When fitting ends, store ``pl_module.model.features(x)`` of every unlabeled image at ``path``."""

    def __init__(self, path: Path, batch_size: int = 1024, use_ema: bool = False) -> None:
        self.path, self.batch_size, self.use_ema = Path(path), int(batch_size), bool(use_ema)

    @torch.no_grad()
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return

        ema = getattr(pl_module, "ema_model", None)
        model = ema if self.use_ema and ema is not None else pl_module.model
        images = trainer.datamodule.split.unlabeled.images
        was_training = model.training
        model.eval()
        feats = []
        for s in range(0, len(images), self.batch_size):
            x = images[s : s + self.batch_size].to(pl_module.device).float().div_(255.0)
            feats.append(model.features(x).float().cpu())
        model.train(was_training)
        save_arrays(self.path, {"features": torch.cat(feats)}, {"kind": "unlabeled_features", "use_ema": self.use_ema})


@register_defense
class ClusteringDefense(DataDefense):
    """Flag the largest tight single-linkage cluster of the unlabeled set and drop it.

    Args:
        space: ``pixels`` (the paper) or ``features`` (penultimate features of a model trained on
            the attacked split for ``feature_steps`` steps, default the row's ``max_steps``).
        n_neighbors, pca_dim, threshold, threshold_ratio, min_cluster_size, largest_only: passed to
            :func:`~lightning_ssl_backdoor.defenses.clustering.cluster_detect`.
        use_ema: take the features from the EMA weights when the algorithm keeps them.
    """

    name = "clustering"

    def __init__(
        self,
        space: str = "pixels",
        n_neighbors: int = 10,
        pca_dim: Optional[int] = 64,
        threshold: Optional[float] = None,
        threshold_ratio: float = 0.5,
        min_cluster_size: int = 5,
        largest_only: bool = True,
        feature_steps: Optional[int] = None,
        use_ema: bool = False,
    ) -> None:
        if space not in SPACES:
            raise ConfigError(f"clustering space must be one of {list(SPACES)}, got {space!r}.")
        for name, v, lo in (("n_neighbors", n_neighbors, 1), ("min_cluster_size", min_cluster_size, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"clustering {name} must be an integer >= {lo}, got {v!r}.")
        if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, int) or pca_dim < 1):
            raise ConfigError(f"clustering pca_dim must be a positive integer or null, got {pca_dim!r}.")
        if threshold is not None and not (isinstance(threshold, (int, float)) and threshold >= 0):
            raise ConfigError(f"clustering threshold must be a non-negative distance or null, got {threshold!r}.")
        if not (isinstance(threshold_ratio, (int, float)) and threshold_ratio > 0):
            raise ConfigError(f"clustering threshold_ratio must be positive, got {threshold_ratio!r}.")
        if feature_steps is not None and (isinstance(feature_steps, bool) or not isinstance(feature_steps, int)
                                          or feature_steps < 1):
            raise ConfigError(f"clustering feature_steps must be a positive integer or null, got {feature_steps!r}.")
        self.space, self.n_neighbors, self.pca_dim = space, n_neighbors, pca_dim
        self.requires = ("features",) if space == "features" else ()
        self.threshold, self.threshold_ratio = threshold, float(threshold_ratio)
        self.min_cluster_size, self.largest_only = min_cluster_size, bool(largest_only)
        self.feature_steps, self.use_ema = feature_steps, bool(use_ema)

    def features(self, split: SSLSplit, ctx: DefenseContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """Penultimate features of every unlabeled image from a model trained on ``split`` (cached)."""
        path = Path(ctx.stage_dir) / "features" / "features.npz"
        steps = self.feature_steps or ctx.trainer.max_steps
        trainer = ctx.with_trainer(
            max_steps=steps,
            val_check_interval=min(ctx.trainer.val_check_interval, steps),
            checkpoint_every_n_steps=min(ctx.trainer.checkpoint_every_n_steps, steps),
        )
        res = ctx.train(split, name="features", trainer=trainer,
                        extra_callbacks=[FeatureSnapshot(path, use_ema=self.use_ema)])
        if not (path.is_file() and path.with_suffix(".json").is_file()):
            raise ConfigError(f"the feature model left no features at {path}; delete {path.parent} to train it again.")
        feats = torch.from_numpy(np.asarray(load_arrays(path)[0]["features"])).float()
        if feats.ndim != 2 or feats.shape[0] != len(split.unlabeled):
            raise ConfigError(
                f"the stored features cover {feats.shape[0]} images but the split has {len(split.unlabeled)} "
                f"unlabeled images; delete {path.parent} to compute them again."
            )
        return feats, {"steps": res.get("steps"), "test": res.get("test", {}), "folder": str(path.parent)}

    def filter(self, split: SSLSplit, ctx: DefenseContext) -> tuple[SSLSplit, dict[str, Any]]:
        extra: dict[str, Any] = {}
        kwargs = dict(n_neighbors=self.n_neighbors, pca_dim=self.pca_dim, threshold=self.threshold,
                      min_cluster_size=self.min_cluster_size, threshold_ratio=self.threshold_ratio,
                      largest_only=self.largest_only, seed=ctx.seed)
        if self.space == "features":
            feats, extra["feature_model"] = self.features(split, ctx)
            det = cluster_detect(None, features=feats, **kwargs)
        else:
            det = cluster_detect(split.unlabeled.images, **kwargs)
        keep = det.keep_mask.detach().cpu()
        poison = poison_mask_of(split)
        info: dict[str, Any] = {"method": "agglomerative_clustering", "space": self.space}
        info.update(detection_info(det.scores, keep, poison))
        info.update(
            threshold=float(det.info["threshold"]),
            median_merge_height=float(det.info["median_merge_height"]),
            flagged_cluster_sizes=list(det.info["flagged_cluster_sizes"]),
            n_neighbors=int(det.info["n_neighbors"]),
            pca_dim=det.info["pca_dim"],
            min_cluster_size=self.min_cluster_size,
            **extra,
        )
        return filter_unlabeled(split, keep), info
