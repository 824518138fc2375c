"""DePuD (Yan et al., TIFS 2021, Sec. V): poison detector -> Grad-CAM masks -> purified SSL.

Importing this package registers ``defense: depud`` with the experiment runner. The parts work on
their own: :class:`PoisonDetector` (labeled vs unlabeled, mix-up, L1 + L2) with
:func:`detector_scores`, :func:`grad_cam` / :func:`compute_masks` (confidence masks),
:func:`purify` (Eq. 24-26) and :func:`purified` (any SSL algorithm with purified unlabeled images),
and the figures :func:`score_histograms` / :func:`gradcam_overlays`.
"""

from lightning_ssl_backdoor.defenses.depud.defense import DePuD, poison_groups
from lightning_ssl_backdoor.defenses.depud.detector import (
    PoisonDetector,
    SaveModelState,
    detector_scores,
    load_model_state,
    mixup,
    soft_cross_entropy,
)
from lightning_ssl_backdoor.defenses.depud.figures import gradcam_overlays, score_histograms
from lightning_ssl_backdoor.defenses.depud.gradcam import compute_masks, grad_cam, normalize_maps, target_layer
from lightning_ssl_backdoor.defenses.depud.purify import (
    MODES,
    PurificationMixin,
    load_masks,
    purified,
    purified_class_path,
    purify,
    save_masks,
)

__all__ = [
    "MODES",
    "DePuD",
    "PoisonDetector",
    "PurificationMixin",
    "SaveModelState",
    "compute_masks",
    "detector_scores",
    "grad_cam",
    "gradcam_overlays",
    "load_masks",
    "load_model_state",
    "mixup",
    "normalize_maps",
    "poison_groups",
    "purified",
    "purified_class_path",
    "purify",
    "save_masks",
    "score_histograms",
    "soft_cross_entropy",
    "target_layer",
]
