"""``activation_clustering``: activation clustering (Chen, Carvalho, Baracaldo, Ludwig, Edwards,
Lee, Molloy and Srivastava, "Detecting Backdoor Attacks on Deep Neural Networks by Activation
Clustering", AAAI SafeAI workshop 2019).

Algorithm (Sec. 3): for every class, take the last hidden layer's activations of its examples,
reduce them to 10 dimensions with independent component analysis (FastICA), and split them into
two clusters with k-means (k = 2); a poisoned class splits into its natural examples and the
triggered ones, a clean class into two similar halves. Relative-size analysis: the smaller cluster
of a class is declared poisonous when it holds at most ``size_threshold`` of the class (default
0.35), and its members are removed before retraining. SSL: classes are the trained model's
pseudo-labels on the unlabeled set (DBD (003) App. L compares with AC on CIFAR-10).

Score (for AUROC): within a class, ``s_i = (d(x_i, c_large) - d(x_i, c_small)) / d(c_large, c_small)``
in ICA space (about +1/2 at the small centroid, -1/2 at the large one); classes whose smaller
cluster is too big to be flagged are shifted by -1, so their members rank below every flagged
class's small cluster. Clustering uses scikit-learn (FastICA, KMeans with 10 restarts), seeded.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from lightning_ssl_backdoor.defenses.base import register_defense
from lightning_ssl_backdoor.defenses.baselines._common import penultimate_features, predict_logits
from lightning_ssl_backdoor.defenses.baselines._detect import FeatureDetector
from lightning_ssl_backdoor.defenses.detector import DetectionResult
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["ActivationClustering", "activation_clustering_scores"]


def _two_means(z: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(z)
    return km.labels_, km.cluster_centers_


def _reduce(x: np.ndarray, dims: int, seed: int) -> np.ndarray:
    if x.shape[1] <= dims or x.shape[0] <= dims:
        return x
    import warnings

    from sklearn.decomposition import FastICA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FastICA's convergence warnings on tiny classes
        return FastICA(n_components=dims, random_state=seed, max_iter=400, whiten="unit-variance").fit_transform(x)


def activation_clustering_scores(
    features: torch.Tensor, labels: torch.Tensor, dims: int = 10, size_threshold: float = 0.35, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(scores [N], keep [N], info)``: per-class ICA + 2-means, relative-size flagging (see module doc)."""
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"give features [N, D] and one (pseudo-)label per row, got {tuple(features.shape)} and {tuple(labels.shape)}."
        )
    if not 0.0 < float(size_threshold) < 0.5:
        raise ConfigError(f"size_threshold must lie in (0, 0.5), got {size_threshold}.")
    feats = features.detach().double().cpu().numpy()
    scores = np.full(feats.shape[0], -1.0)
    keep = torch.ones(feats.shape[0], dtype=torch.bool)
    sizes: dict[int, float] = {}
    for y in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == y).flatten().numpy()
        if idx.size < 4:
            continue
        z = _reduce(feats[idx], dims, seed)
        assign, centres = _two_means(z, seed)
        small = int(np.bincount(assign, minlength=2).argmin())
        rel = float((assign == small).mean())
        sizes[int(y)] = rel
        gap = np.linalg.norm(centres[0] - centres[1]) + 1e-12
        d_small = np.linalg.norm(z - centres[small], axis=1)
        d_large = np.linalg.norm(z - centres[1 - small], axis=1)
        s = (d_large - d_small) / gap
        if rel <= size_threshold:
            keep[torch.as_tensor(idx[assign == small])] = False
        else:
            s = s - 1.0
        scores[idx] = s
    return torch.as_tensor(scores, dtype=torch.float32), keep, {"relative_sizes": sizes}


@register_defense
class ActivationClustering(FeatureDetector):
    """``defense: activation_clustering``: per (pseudo-)class ICA + 2-means on the suspected pool's
    features, drop the flagged clusters, retrain (the data-stage shape of
    :class:`~._detect.FeatureDetector`: ``pool``, ``feature_steps``, ``use_ema``)."""

    name = "activation_clustering"

    def __init__(self, dims: int = 10, size_threshold: float = 0.35, pool: str = "auto",
                 feature_steps: Optional[int] = None, use_ema: bool = True) -> None:
        if int(dims) < 1:
            raise ConfigError(f"dims must be a positive integer, got {dims}.")
        if not 0.0 < float(size_threshold) < 0.5:
            raise ConfigError(f"size_threshold must lie in (0, 0.5), got {size_threshold}.")
        self.dims, self.size_threshold = int(dims), float(size_threshold)
        self._detector_options(pool, feature_steps, use_ema)

    def detect(self, model: nn.Module, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
               seed: int = 0) -> DetectionResult:
        self.check_model(model)
        labels = predict_logits(model, images).argmax(1) if labels is None else labels
        scores, keep, info = activation_clustering_scores(
            penultimate_features(model, images), labels, self.dims, self.size_threshold, seed
        )
        return DetectionResult(scores, keep, info)
