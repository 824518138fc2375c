"""Pi-Model (Laine & Aila, ICLR 2017, Sec. 2.1 and Alg. 1).

Two stochastic passes over each unlabeled image (two independent weak augmentations, "weak" and
"weak2"; the network's own noise, if any, is drawn per pass) and the consistency
Loss = CE(labeled weak) + lambda_u * w(t) * mean over batch and classes of
(softmax(z_b) - softmax(z~_b))^2, with the second pass z~ as a constant target (as the USB
implementation does). ``w(t)`` is the paper's Gaussian ramp-up exp(-5 (1 - t)^2) over the first
``rampup_ratio`` of training (80 of 300 epochs in the paper, i.e. ~0.27). One forward pass over
[labeled weak, unlabeled weak, unlabeled weak2]. Defaults (USB, CIFAR-10): lambda_u = 10.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import softmax_mse_loss
from lightning_ssl_backdoor.ssl.base import SSLModule


class PiModel(SSLModule):
    """Pi-Model. ``rampup_ratio`` / ``rampup_shape``: ramp of the consistency weight."""

    unlabeled_views = ("weak", "weak2")

    def __init__(self, *, rampup_ratio: float = 0.4, rampup_shape: str = "sigmoid", **kwargs: Any) -> None:
        self.check_ramp(rampup_ratio, rampup_shape)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("PiModel needs unlabeled data: set data.mu >= 1.")
        logits_l, logits_u1, logits_u2 = self.forward_cat(labeled["weak"], unlabeled["weak"], unlabeled["weak2"])
        sup = self.supervised_loss(logits_l, labeled["y"])
        unsup = softmax_mse_loss(logits_u1, logits_u2)
        weight = self.hparams.lambda_u * self.ramp(self.hparams.rampup_ratio, self.hparams.rampup_shape)
        return {
            "loss": sup + weight * unsup,
            "sup_loss": sup.detach(),
            "unsup_loss": unsup.detach(),
            "unsup_weight": float(weight),
            "u_pseudo": logits_u2.detach().argmax(1),
        }
