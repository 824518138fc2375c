"""FixMatch (Sohn et al., NeurIPS 2020).

Loss = CE(labeled weak) + lambda_u * (1 / (mu B)) * sum_b 1[max p(y | weak_b) >= tau] *
CE(argmax p(y | weak_b), p(y | strong_b)), with one concatenated forward pass over
[labeled weak, unlabeled weak, unlabeled strong] (so BatchNorm sees all three together).
Defaults: mu = 7, tau = 0.95, lambda_u = 1, lr 0.03, weight decay 5e-4, EMA 0.999.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import fixmatch_pseudo_labels, fixmatch_unlabeled_loss
from lightning_ssl_backdoor.ssl.base import SSLModule


class FixMatch(SSLModule):
    """FixMatch. ``threshold`` is the confidence tau of the pseudo-label mask."""

    unlabeled_views = ("weak", "strong")

    def __init__(self, *, threshold: float = 0.95, **kwargs: Any) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold}.")
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def unlabeled_logits(self, labeled: dict, unlabeled: dict):
        return self.forward_cat(labeled["weak"], unlabeled["weak"], unlabeled["strong"])

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("FixMatch needs unlabeled data: set data.mu >= 1.")
        logits_l, logits_w, logits_s = self.unlabeled_logits(labeled, unlabeled)
        sup = self.supervised_loss(logits_l, labeled["y"])
        tau = float(self.hparams.threshold)
        unsup = fixmatch_unlabeled_loss(logits_w, logits_s, threshold=tau)
        pseudo, mask, _ = fixmatch_pseudo_labels(logits_w.detach(), tau)
        loss = sup + self.hparams.lambda_u * unsup
        return {
            "loss": loss,
            "sup_loss": sup.detach(),
            "unsup_loss": unsup.detach(),
            "mask_rate": mask.float().mean(),
            "u_pseudo": pseudo,
            "u_mask": mask,
        }
