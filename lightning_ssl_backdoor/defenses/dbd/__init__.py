"""DBD (Huang et al., ICLR 2022): SimCLR -> frozen-backbone SCE head -> MixMatch fine-tuning.

Importing this package registers ``defense: dbd`` with the experiment runner. The stages are usable
on their own: :class:`SimCLR` (self-supervised pre-training), :class:`LinearHead` with
:func:`rank_by_loss` (filtering high-credible samples), :class:`DBDFineTune` (semi-supervised
fine-tuning that re-filters every epoch) and :class:`SimCLRAugment` (per-sample SimCLR views).
"""

from lightning_ssl_backdoor.defenses.dbd.defense import DBD, training_images
from lightning_ssl_backdoor.defenses.dbd.finetune import DBDFineTune
from lightning_ssl_backdoor.defenses.dbd.linear_head import (
    LinearHead,
    lowest_fraction,
    per_sample_losses,
    rank_by_loss,
    robust_loss_fn,
)
from lightning_ssl_backdoor.defenses.dbd.simclr import (
    ExportModel,
    ProjectionHead,
    SimCLR,
    load_backbone_state,
    load_classifier_state,
    save_model_state,
)
from lightning_ssl_backdoor.defenses.dbd.views import SimCLRAugment, gaussian_blur, resized_crop_matrices

__all__ = [
    "DBD",
    "DBDFineTune",
    "ExportModel",
    "LinearHead",
    "ProjectionHead",
    "SimCLR",
    "SimCLRAugment",
    "gaussian_blur",
    "load_backbone_state",
    "load_classifier_state",
    "lowest_fraction",
    "per_sample_losses",
    "rank_by_loss",
    "resized_crop_matrices",
    "robust_loss_fn",
    "save_model_state",
    "training_images",
]
