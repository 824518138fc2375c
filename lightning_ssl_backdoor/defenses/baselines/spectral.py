"""``spectral``: spectral signatures (Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks",
NeurIPS 2018).

Algorithm (Alg. 1): for every class ``y``, take the penultimate representations ``R_i`` of its
examples, centre them, ``M = [R_i - mean(R)]_i``, find the top right singular vector ``v`` of ``M``
and score every example by its squared projection ``tau_i = ((R_i - mean(R)) . v)^2``; poisons carry
a strong signal along ``v``, so they score highest. Remove the ``1.5 * epsilon`` highest-scoring
examples of every class, ``epsilon`` being the defender's upper bound on the number of poisons, and
retrain on the rest. DBD (003) App. L: per-class removal of 1.5 epsilon, epsilon in {250, 500,
1000, 1500} of 50000 (0.5% to 3%). SSL: the unlabeled set has no labels, so the classes are the
trained model's pseudo-labels (argmax), as ARCHITECTURE.md says ("per (pseudo-)class on penultimate
features"). Default ``epsilon = 0.01`` (a fraction of the scored set). The scores are the paper's
``tau`` (only comparable within a class: the paper ranks per class); ``relative = True`` divides
them by their class mean (same removal). The AUROC ``defense: spectral`` reports is over the whole
pool with the raw ``tau``: a heavily poisoned class has the largest top singular value, so its
poisons outrank every other class's outliers (dividing by the class mean would not: with a poison
fraction ``p`` the poisons' relative score is only ``(1 - p) / p``). Poison-label attacks: the
labeled pool is scored per given label (``pool: auto``; see :mod:`._detect`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from lightning_ssl_backdoor.defenses.base import register_defense
from lightning_ssl_backdoor.defenses.baselines._common import check_positive, penultimate_features, predict_logits
from lightning_ssl_backdoor.defenses.baselines._detect import FeatureDetector
from lightning_ssl_backdoor.defenses.detector import DetectionResult
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["SpectralSignatures", "spectral_keep_mask", "spectral_scores"]


def _check_features(features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"give features [N, D] and one (pseudo-)label per row, got {tuple(features.shape)} and {tuple(labels.shape)}."
        )


def spectral_scores(features: torch.Tensor, labels: torch.Tensor, relative: bool = False) -> torch.Tensor:
    """Outlier score ``[N]`` per example: squared projection on its class's top singular vector.

    ``relative`` divides each class's scores by their class mean (``sigma_1^2 / n_y``), which keeps
    the order within a class (what the removal uses) and makes scores comparable across classes
    (what a single AUROC over the whole set needs).
    """
    _check_features(features, labels)
    feats = features.detach().to(torch.float64)
    scores = torch.zeros(feats.shape[0], dtype=torch.float64)
    for y in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == y).flatten()
        if idx.numel() < 2:
            continue  # one example has no spread: score 0
        centred = feats[idx] - feats[idx].mean(0, keepdim=True)
        v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        tau = (centred @ v).pow(2)
        scores[idx] = tau / tau.mean().clamp_min(1e-12) if relative else tau
    return scores.float()


def spectral_keep_mask(scores: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.01) -> torch.Tensor:
    """Keep mask: drop the ``round(1.5 * epsilon * N)`` top scores of every class (at most the class)."""
    if not 0.0 < float(epsilon) < 1.0:
        raise ConfigError(f"epsilon (the assumed poison fraction) must lie in (0, 1), got {epsilon}.")
    remove = int(round(1.5 * float(epsilon) * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    for y in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == y).flatten()
        order = torch.sort(scores[idx], descending=True, stable=True).indices
        keep[idx[order[: min(remove, idx.numel())]]] = False
    return keep


@register_defense
class SpectralSignatures(FeatureDetector):
    """``defense: spectral``: score the suspected pool per (pseudo-)class, drop ``1.5 epsilon`` per class,
    retrain (the data-stage shape of :class:`~._detect.FeatureDetector`: ``pool``, ``feature_steps``,
    ``use_ema``)."""

    name = "spectral"

    def __init__(self, epsilon: float = 0.01, relative: bool = False, pool: str = "auto",
                 feature_steps: Optional[int] = None, use_ema: bool = True) -> None:
        check_positive(epsilon=epsilon)
        if not float(epsilon) < 1.0:
            raise ConfigError(f"epsilon (the assumed poison fraction) must lie in (0, 1), got {epsilon}.")
        self.epsilon, self.relative = float(epsilon), bool(relative)
        self._detector_options(pool, feature_steps, use_ema)

    def detect(self, model: nn.Module, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
               seed: int = 0) -> DetectionResult:
        """Scores and keep mask of ``images`` (pseudo-labels from ``model`` when ``labels`` is None)."""
        self.check_model(model)
        labels = predict_logits(model, images).argmax(1) if labels is None else labels
        scores = spectral_scores(penultimate_features(model, images), labels, relative=self.relative)
        keep = spectral_keep_mask(scores, labels, self.epsilon)
        return DetectionResult(scores, keep, {"epsilon": self.epsilon, "scored_classes": torch.unique(labels).tolist()})
