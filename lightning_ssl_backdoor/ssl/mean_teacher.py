"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017; Yan et al. 2021, Eq. 7-8).

The teacher is the EMA of the student's weights, theta' <- alpha theta' + (1 - alpha) theta
(Eq. 7 of Yan et al.; the base class's ``ema_model``, updated after every step). The student sees
one weak augmentation ("weak"), the teacher an independent one ("weak2", no gradient), and
Loss = CE(labeled weak) + lambda_u * w(t) * mean over batch and classes of
(softmax(student_b) - softmax(teacher_b))^2 (the MSE consistency of the paper, Sec. 2), ``w(t)`` the
paper's sigmoid ramp-up over the first ``rampup_ratio`` of training. With ``ema_warmup`` (the
authors' code) the decay at step t is min(1 - 1 / (t + 1), alpha): a true average of the weights
so far until the exponential average is the better estimate, so the early teacher is not dominated
by the random initialisation.
Defaults (USB, CIFAR-10): lambda_u = 50, EMA 0.999, ramp 0.4; Yan et al.'s Table I settings
(lr 0.0004, lambda_u 8, alpha_ema 0.95) are ``configs/ssl/mean_teacher_yan.yaml``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import softmax_mse_loss
from lightning_ssl_backdoor.ssl.base import SSLModule


class MeanTeacher(SSLModule):
    """Mean Teacher: needs ``ema_decay`` (the teacher's alpha). ``rampup_*``: consistency ramp;
    ``ema_warmup``: the authors' warm-up of the decay."""

    unlabeled_views = ("weak", "weak2")

    def __init__(
        self, *, rampup_ratio: float = 0.4, rampup_shape: str = "sigmoid", ema_warmup: bool = True,
        **kwargs: Any,
    ) -> None:
        self.check_ramp(rampup_ratio, rampup_shape)
        super().__init__(**kwargs)
        if self.ema_model is None:
            raise ConfigError("MeanTeacher's teacher is the EMA model: set ema_decay (for example 0.999), not null.")
        self.save_hyperparameters()

    def ema_decay_now(self) -> float:
        decay = float(self.hparams.ema_decay)
        if not self.hparams.ema_warmup:
            return decay
        return min(1.0 - 1.0 / (self.global_step + 1), decay)

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("MeanTeacher needs unlabeled data: set data.mu >= 1.")
        logits_l, logits_s = self.forward_cat(labeled["weak"], unlabeled["weak"])
        with torch.no_grad():
            logits_t = self.ema_model(self._fmt(unlabeled["weak2"]))
        sup = self.supervised_loss(logits_l, labeled["y"])
        unsup = softmax_mse_loss(logits_s, logits_t)
        weight = self.hparams.lambda_u * self.ramp(self.hparams.rampup_ratio, self.hparams.rampup_shape)
        return {
            "loss": sup + weight * unsup,
            "sup_loss": sup.detach(),
            "unsup_loss": unsup.detach(),
            "unsup_weight": float(weight),
            "u_pseudo": logits_t.argmax(1),
        }
