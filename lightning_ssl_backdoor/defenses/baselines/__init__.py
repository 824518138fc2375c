"""The papers' baseline defenses, one short file each (issue 15), each a registered ``defense:`` name.

Each file holds a PURE core (torch, models, losses, metrics, augment only) and a thin class on the
defense interface of :mod:`lightning_ssl_backdoor.defenses.base`:

- :class:`~lightning_ssl_backdoor.defenses.base.ModelDefense` (the row's model is trained as usual,
  then ``repair(model, ctx)`` runs on the defender's benign labeled data, ``benign`` option):
  :mod:`.ft` (fine-tuning), :mod:`.fp` (fine-pruning, Liu et al. 2018), :mod:`.nad` (Li et al.
  2021), :mod:`.mcr` (Zhao et al. 2020), :mod:`.abl` (Li et al. 2021, adapted to SSL),
  :mod:`.neural_cleanse` (Wang et al. 2019), :mod:`.shrinkpad` (Li et al. 2021; the repaired model
  applies the test-time transform to every test input);
- :class:`~lightning_ssl_backdoor.defenses.base.DataDefense` (:class:`._detect.FeatureDetector`:
  train on the attacked split, score the suspected pool per (pseudo-)class on penultimate features,
  report AUROC / precision / recall, retrain on what is kept): :mod:`.spectral` (Tran et al.
  2018), :mod:`.activation_clustering` (Chen et al. 2019);
- :mod:`.dpsgd` (Abadi et al. 2016): a classifier trained from scratch with DP-SGD on the labeled
  set (per-sample clipping + noise via ``torch.func``); not yet a plug-in into the SSL step.

Importing this package registers every class with ``register_defense``; ``BASELINES`` maps each
name to its class.
"""

from lightning_ssl_backdoor.defenses.baselines.abl import AntiBackdoorLearning, abl_isolate, abl_unlearn, lga_loss
from lightning_ssl_backdoor.defenses.baselines.activation_clustering import (
    ActivationClustering,
    activation_clustering_scores,
)
from lightning_ssl_backdoor.defenses.baselines.dpsgd import DPSGD, clip_and_noise, dp_sgd_step, per_sample_gradients
from lightning_ssl_backdoor.defenses.baselines.fp import FinePruning, fine_prune, pruning_order
from lightning_ssl_backdoor.defenses.baselines.ft import FineTuning, fine_tune
from lightning_ssl_backdoor.defenses.baselines.mcr import ModeConnectivityRepair, bezier_point, mcr_repair
from lightning_ssl_backdoor.defenses.baselines.nad import NeuralAttentionDistillation, nad_attention, nad_distill
from lightning_ssl_backdoor.defenses.baselines.neural_cleanse import (
    NeuralCleanse,
    mad_anomaly_index,
    neural_cleanse,
    reverse_engineer_trigger,
)
from lightning_ssl_backdoor.defenses.baselines.shrinkpad import ShrinkPad, ShrinkPadTransform, shrink_pad
from lightning_ssl_backdoor.defenses.baselines.spectral import SpectralSignatures, spectral_scores

BASELINES = {
    cls.name: cls
    for cls in (
        FineTuning,
        FinePruning,
        NeuralAttentionDistillation,
        ModeConnectivityRepair,
        AntiBackdoorLearning,
        NeuralCleanse,
        ShrinkPad,
        SpectralSignatures,
        ActivationClustering,
        DPSGD,
    )
}

__all__ = [
    "ActivationClustering",
    "AntiBackdoorLearning",
    "BASELINES",
    "DPSGD",
    "FinePruning",
    "FineTuning",
    "ModeConnectivityRepair",
    "NeuralAttentionDistillation",
    "NeuralCleanse",
    "ShrinkPad",
    "ShrinkPadTransform",
    "SpectralSignatures",
    "abl_isolate",
    "abl_unlearn",
    "activation_clustering_scores",
    "bezier_point",
    "clip_and_noise",
    "dp_sgd_step",
    "fine_prune",
    "fine_tune",
    "lga_loss",
    "mad_anomaly_index",
    "mcr_repair",
    "nad_attention",
    "nad_distill",
    "neural_cleanse",
    "per_sample_gradients",
    "pruning_order",
    "reverse_engineer_trigger",
    "shrink_pad",
    "spectral_scores",
]
