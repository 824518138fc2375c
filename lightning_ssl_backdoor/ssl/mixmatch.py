"""MixMatch (Berthelot et al., NeurIPS 2019, Alg. 1 and Eq. 2-11).

Label guessing: K weak augmentations of each unlabeled image ("weak", "weak2", ...), the mean of
their softmax predictions (no gradient, BatchNorm statistics frozen) sharpened with temperature T
(Eq. 6-7). Mix-up (Eq. 8-11): W = shuffle([labeled weak with one-hot labels; all K unlabeled views
with their guess]), one lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda), each
element mixed with its partner in W (done as one permutation of the concatenated batch, which is
the same thing). Loss (Eq. 2-5): soft-target CE on the mixed labeled part +
lambda_u * w(t) * MSE(softmax, mixed guess) on the mixed unlabeled part (mean over batch and
classes), w(t) a linear ramp over the first ``rampup_ratio`` of training (16k of 1M steps = 1/64 in
the paper). The interleaving of the official code (a BatchNorm trick for multi-GPU) is not done:
one forward pass sees the whole mixed batch. Defaults (CIFAR-10): K = 2, T = 0.5, alpha = 0.75,
lambda_u = 75, EMA 0.999.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import mixmatch_unlabeled_loss, mixup, sharpen
from lightning_ssl_backdoor.ssl.base import SSLModule


class MixMatch(SSLModule):
    """MixMatch. ``num_augmentations``: K; ``temperature``: T; ``mixup_alpha``; ``rampup_*``."""

    def __init__(
        self, *, num_augmentations: int = 2, temperature: float = 0.5, mixup_alpha: float = 0.75,
        rampup_ratio: float = 1.0 / 64, rampup_shape: str = "linear", **kwargs: Any,
    ) -> None:
        if num_augmentations < 1:
            raise ConfigError(f"num_augmentations (K) must be >= 1, got {num_augmentations}.")
        if temperature <= 0 or mixup_alpha <= 0:
            raise ConfigError(
                f"temperature and mixup_alpha must be positive, got {temperature} and {mixup_alpha}."
            )
        self.check_ramp(rampup_ratio, rampup_shape)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.unlabeled_views = ("weak",) + tuple(f"weak{k + 1}" for k in range(1, num_augmentations))

    @torch.no_grad()
    def guess_labels(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Sharpened mean prediction over the K views (Eq. 6-7), BatchNorm statistics untouched."""
        with self.frozen_bn_stats(self.model):
            logits = self.forward_cat(*views)
        mean = torch.stack([lg.softmax(1) for lg in logits]).mean(0)
        return sharpen(mean, float(self.hparams.temperature))

    def mix_batch(self, labeled: dict, unlabeled: dict) -> dict[str, Any]:
        """Guess labels, concatenate and mix up: returns the mixed inputs / targets and the parts."""
        views = [unlabeled[v] for v in self.unlabeled_views]
        q = self.guess_labels(views)
        x_all = torch.cat([labeled["weak"], *views])
        onehot = F.one_hot(labeled["y"], q.shape[1]).to(q.dtype)
        y_all = torch.cat([onehot] + [q] * len(views))
        x_mix, y_mix, lam, perm = mixup(x_all, y_all, float(self.hparams.mixup_alpha))
        return {"x_all": x_all, "y_all": y_all, "x_mix": x_mix, "y_mix": y_mix, "lam": lam, "perm": perm, "q": q}

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("MixMatch needs unlabeled data: set data.mu >= 1.")
        m = self.mix_batch(labeled, unlabeled)
        b = len(labeled["y"])
        logits = self.model(self._fmt(m["x_mix"]))
        sup = F.cross_entropy(logits[:b], m["y_mix"][:b])
        unsup = mixmatch_unlabeled_loss(logits[b:].softmax(1), m["y_mix"][b:])
        weight = self.hparams.lambda_u * self.ramp(self.hparams.rampup_ratio, self.hparams.rampup_shape)
        return {
            "loss": sup + weight * unsup,
            "sup_loss": sup.detach(),
            "unsup_loss": unsup.detach(),
            "unsup_weight": float(weight),
            "mixup_lambda": float(m["lam"]),
            "u_pseudo": m["q"].argmax(1),
        }
