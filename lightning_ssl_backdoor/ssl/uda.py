"""Unsupervised Data Augmentation (Xie et al., NeurIPS 2020, Sec. 2-3).

Loss = supervised CE (optionally with Training Signal Annealing) + lambda_u *
(1 / (mu B)) * sum_b 1[max p(y | weak_b) >= beta] * KL(sharpen(weak_b) || p(y | strong_b)),
where the target is softmax(logits_weak / tau) (sharpening by temperature, Sec. 3.2; no gradient),
beta the confidence mask (Sec. 3.2) and the strong view is RandAugment. One forward pass over
[labeled weak, unlabeled weak, unlabeled strong].

TSA (Sec. 3.3, optional: ``tsa`` = "linear" / "log" / "exp"): at step t a labeled example whose
predicted probability of its label is >= eta_t = alpha_t (1 - 1/K) + 1/K is dropped from the
supervised loss, which is averaged over the kept examples (sum / max(1, kept), as the official code).
Defaults (CIFAR-10, USB): tau = 0.4, beta = 0.8, lambda_u = 1, TSA off.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import fixmatch_pseudo_labels, tsa_mask, tsa_threshold, uda_unlabeled_loss
from lightning_ssl_backdoor.ssl.base import SSLModule

TSA_SCHEDULES = ("linear", "log", "exp")


class UDA(SSLModule):
    """UDA. ``temperature``: sharpening tau; ``threshold``: confidence mask beta; ``tsa``: None or a
    TSA schedule name."""

    unlabeled_views = ("weak", "strong")

    def __init__(
        self, *, temperature: float = 0.4, threshold: float = 0.8, tsa: Optional[str] = None, **kwargs: Any
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}.")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold}.")
        if tsa is not None and tsa not in TSA_SCHEDULES:
            raise ConfigError(f"tsa must be null or one of {list(TSA_SCHEDULES)}, got {tsa!r}.")
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def labeled_loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Optional[float]]:
        """CE, or with TSA the CE averaged over the examples below the current threshold."""
        if self.hparams.tsa is None:
            return self.supervised_loss(logits, y), None
        eta = tsa_threshold(self.hparams.tsa, int(self.global_step), self.total_steps(), logits.shape[1])
        keep = tsa_mask(logits, y, eta)
        ce = F.cross_entropy(logits, y, reduction="none")
        return (ce * keep).sum() / keep.sum().clamp_min(1), eta

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("UDA needs unlabeled data: set data.mu >= 1.")
        logits_l, logits_w, logits_s = self.forward_cat(labeled["weak"], unlabeled["weak"], unlabeled["strong"])
        sup, eta = self.labeled_loss(logits_l, labeled["y"])
        beta = float(self.hparams.threshold)
        unsup = uda_unlabeled_loss(logits_w, logits_s, temperature=float(self.hparams.temperature), threshold=beta)
        pseudo, mask, _ = fixmatch_pseudo_labels(logits_w, beta)
        out = {
            "loss": sup + self.hparams.lambda_u * unsup,
            "sup_loss": sup.detach(),
            "unsup_loss": unsup.detach(),
            "mask_rate": mask.float().mean(),
            "u_pseudo": pseudo,
            "u_mask": mask,
        }
        if eta is not None:
            out["tsa_threshold"] = float(eta)
        return out
