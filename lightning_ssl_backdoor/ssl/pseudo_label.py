"""Pseudo-Label (Lee, ICML-W 2013), in the thresholded form of the USB / FixMatch baselines.

Loss = CE(labeled weak) + lambda_u * w(t) * (1 / (mu B)) * sum_b 1[max p(y | u_b) >= tau] *
CE(argmax p(y | u_b), p(y | u_b)): the hard label of a weakly augmented unlabeled image is its own
arg-max (treated as a constant), used only above the confidence ``threshold`` (Lee's Eq. 1 without a
threshold is ``threshold=0``). ``w(t)`` ramps the weight up over the first ``rampup_ratio`` of
training (Lee's alpha(t), Eq. 16, rises linearly from 0 to its final value; the USB baseline ramps
it over the first 40 % of the iterations). One forward pass over [labeled weak, unlabeled weak].
Defaults (USB, CIFAR-10): tau = 0.95, lambda_u = 1, ramp 0.4 linear.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import fixmatch_pseudo_labels, pseudo_label_loss
from lightning_ssl_backdoor.ssl.base import SSLModule


class PseudoLabel(SSLModule):
    """Pseudo-Label. ``threshold``: confidence tau; ``rampup_ratio`` / ``rampup_shape``: the ramp of
    the unlabeled weight over the first fraction of ``max_steps``."""

    unlabeled_views = ("weak",)

    def __init__(
        self, *, threshold: float = 0.95, rampup_ratio: float = 0.4,
        rampup_shape: str = "linear", **kwargs: Any,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold}.")
        self.check_ramp(rampup_ratio, rampup_shape)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("PseudoLabel needs unlabeled data: set data.mu >= 1.")
        logits_l, logits_u = self.forward_cat(labeled["weak"], unlabeled["weak"])
        sup = self.supervised_loss(logits_l, labeled["y"])
        tau = float(self.hparams.threshold)
        unsup = pseudo_label_loss(logits_u, threshold=tau)
        pseudo, mask, _ = fixmatch_pseudo_labels(logits_u, tau)
        weight = self.hparams.lambda_u * self.ramp(self.hparams.rampup_ratio, self.hparams.rampup_shape)
        return {
            "loss": sup + weight * unsup,
            "sup_loss": sup.detach(),
            "unsup_loss": unsup.detach(),
            "unsup_weight": float(weight),
            "mask_rate": mask.float().mean(),
            "u_pseudo": pseudo,
            "u_mask": mask,
        }
