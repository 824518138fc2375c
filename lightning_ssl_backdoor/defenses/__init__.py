"""Defenses: the interface and registry (:mod:`~lightning_ssl_backdoor.defenses.base`), the data-stage
detectors that score every training example (higher = more suspicious), and the registered defenses.

Importing this package registers every defense (``defenses.base.DEFENSES``); nothing here imports
the experiment runner.
"""

from lightning_ssl_backdoor.defenses.base import (
    DEFENSES,
    DataDefense,
    Defense,
    DefenseContext,
    ModelDefense,
    TrainedModel,
    build_defense,
    defense_class,
    register_defense,
)
from lightning_ssl_backdoor.defenses.baselines import BASELINES  # registers the papers' baselines (issue 15)
from lightning_ssl_backdoor.defenses.clustering import cluster_detect, single_linkage_heights
from lightning_ssl_backdoor.defenses.clustering_defense import ClusteringDefense
from lightning_ssl_backdoor.defenses.dbd import DBD
from lightning_ssl_backdoor.defenses.depud import DePuD
from lightning_ssl_backdoor.defenses.detector import DetectionResult, keep_mask_from_scores
from lightning_ssl_backdoor.defenses.dynamics import TrainingDynamicsRecorder
from lightning_ssl_backdoor.defenses.influence import (
    delta_roughness,
    influence_detect,
    influence_scores,
    influence_vectors,
    plot_influence_histogram,
    self_influence,
)
from lightning_ssl_backdoor.defenses.influence_defense import InfluenceDefense
from lightning_ssl_backdoor.defenses.invalidator_defense import Invalidator
from lightning_ssl_backdoor.defenses.knn import chunked_knn, mean_knn_sqdist, pair_dots
from lightning_ssl_backdoor.defenses.oracle import OracleRemoval
from lightning_ssl_backdoor.defenses.upure import UPure  # registers upure (issue 33)
from lightning_ssl_backdoor.defenses.self_training import (  # registers self_training, self_training_simclr, strong_augment
    SelfTrainingDefense,
    SelfTrainingSimCLR,
    StrongAugment,
)

__all__ = [
    "BASELINES",
    "ClusteringDefense",
    "DBD",
    "DEFENSES",
    "DataDefense",
    "DePuD",
    "Defense",
    "DefenseContext",
    "DetectionResult",
    "InfluenceDefense",
    "Invalidator",
    "ModelDefense",
    "OracleRemoval",
    "SelfTrainingDefense",
    "SelfTrainingSimCLR",
    "StrongAugment",
    "TrainedModel",
    "TrainingDynamicsRecorder",
    "UPure",
    "build_defense",
    "chunked_knn",
    "cluster_detect",
    "defense_class",
    "delta_roughness",
    "influence_detect",
    "influence_scores",
    "influence_vectors",
    "keep_mask_from_scores",
    "mean_knn_sqdist",
    "pair_dots",
    "plot_influence_histogram",
    "register_defense",
    "self_influence",
    "single_linkage_heights",
]
