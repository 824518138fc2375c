"""Self-training as a backdoor defense (Pal et al., paper 002): the driver of Algorithm 1
(:mod:`.driver`), torch k-means (:mod:`.kmeans`) and cluster pseudo-labels (:mod:`.clusters`) for
Algorithm 2, the registered defenses ``self_training`` / ``self_training_simclr`` (:mod:`.defense`)
and ``strong_augment`` (:mod:`.strong_augment`: RCS0.5 + VFlip on every test input, Pal's Fig. 1).
"""

from lightning_ssl_backdoor.defenses.self_training.clusters import (
    agreement_matrix,
    cluster_pseudo_labels,
    hungarian_labels,
    majority_labels,
)
from lightning_ssl_backdoor.defenses.self_training.defense import SelfTrainingDefense, SelfTrainingSimCLR
from lightning_ssl_backdoor.defenses.self_training.driver import (
    SelfTraining,
    SelfTrainingConfig,
    SelfTrainingResult,
    self_train,
)
from lightning_ssl_backdoor.defenses.self_training.kmeans import KMeansResult, kmeans, nearest_centre
from lightning_ssl_backdoor.defenses.self_training.strong_augment import StrongAugment, StrongAugmentModel

__all__ = [
    "KMeansResult",
    "SelfTraining",
    "SelfTrainingConfig",
    "SelfTrainingDefense",
    "SelfTrainingResult",
    "SelfTrainingSimCLR",
    "StrongAugment",
    "StrongAugmentModel",
    "agreement_matrix",
    "cluster_pseudo_labels",
    "hungarian_labels",
    "kmeans",
    "majority_labels",
    "nearest_centre",
    "self_train",
]
