"""Data-stage defenses: detectors that score every training example (higher = more suspicious)."""

from lightning_ssl_backdoor.defenses.clustering import cluster_detect, single_linkage_heights
from lightning_ssl_backdoor.defenses.detector import DetectionResult, keep_mask_from_scores
from lightning_ssl_backdoor.defenses.influence import (
    chunked_knn,
    delta_roughness,
    influence_detect,
    influence_scores,
    influence_vectors,
    pair_dots,
    plot_influence_histogram,
    self_influence,
)

__all__ = [
    "DetectionResult",
    "chunked_knn",
    "cluster_detect",
    "delta_roughness",
    "influence_detect",
    "influence_scores",
    "influence_vectors",
    "keep_mask_from_scores",
    "pair_dots",
    "plot_influence_histogram",
    "self_influence",
    "single_linkage_heights",
]
