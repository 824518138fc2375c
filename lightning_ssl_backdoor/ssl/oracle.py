"""FixMatch with a perfect pseudo-label hijack: the ceiling of any unlabeled-data backdoor.

``fixmatch_oracle`` is FixMatch (Sohn et al. 2020) except that every *triggered* poison of the
unlabeled set (:meth:`~lightning_ssl_backdoor.data.PoisonedSplit.triggered_poison_mask`) gets the
target pseudo-label t with mask 1 at every step:

    pseudo(u) = t and mask(u) = 1          for u in P_trig,
    pseudo(u), mask(u) as in FixMatch        otherwise.

Every other part (data, augmentation, model, schedule) is the row's. What ASR it reaches is the
most any hijack (DeNeB's perturbation, Turner's adversarial enhancement, ...) can give with those
poisons at that scale: if the oracle does not reach a high ASR, the victim is too small or too
briefly trained to learn the trigger at all and every attack will look weak (the check
``benchmarks/results/cifar10_scale.md`` records before any attack comparison). A diagnostic, not a
learner anyone would deploy: it reads the poison ground truth.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import fixmatch_pseudo_labels
from lightning_ssl_backdoor.ssl.fixmatch import FixMatch


class FixMatchOracle(FixMatch):
    """FixMatch whose triggered poisons always carry the target pseudo-label with mask 1."""

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("FixMatch needs unlabeled data: set data.mu >= 1.")
        trig_mask = getattr(self, "_trigger_mask", None)
        if self.target is None or trig_mask is None:
            return super().compute_losses(labeled, unlabeled)
        logits_l, logits_w, logits_s = self.unlabeled_logits(labeled, unlabeled)
        sup = self.supervised_loss(logits_l, labeled["y"])
        pseudo, mask, _ = fixmatch_pseudo_labels(logits_w.detach(), float(self.hparams.threshold))
        triggered = trig_mask.to(unlabeled["idx"].device)[unlabeled["idx"]]
        pseudo = torch.where(triggered, torch.full_like(pseudo, int(self.target)), pseudo)
        mask = mask | triggered
        unsup = (F.cross_entropy(logits_s, pseudo, reduction="none") * mask.float()).mean()
        return {"loss": sup + self.hparams.lambda_u * unsup, "sup_loss": sup.detach(),
                "unsup_loss": unsup.detach(), "mask_rate": mask.float().mean(), "u_pseudo": pseudo,
                "u_mask": mask}
