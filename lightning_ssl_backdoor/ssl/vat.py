"""Virtual Adversarial Training (Miyato et al., TPAMI 2018; Yan et al. 2021, Eq. 9).

Loss = CE(labeled weak) + lambda_u * w(t) * mean_b KL(p(y | u_b) || p(y | u_b + r_adv,b))
[+ entmin_weight * mean_b H(p(y | u_b)) for VAT + EntMin], where (Sec. 3.1-3.3)
r_adv = eps * g / ||g||_2 is found by ``power_iterations`` steps of the power method from a
Gaussian d: g = grad_r KL(p(y | u) || p(y | u + r)) at r = xi * d / ||d||_2, d <- g. Every norm is
taken per sample over C, H, W, so each image's perturbation has L2 norm exactly ``eps``.

``eps_space``: "normalized" measures xi and eps on the model's standardised input
(x - mean) / std, as the papers do (their images are standardised / ZCA-whitened: the perturbation
in pixel space is r * std per channel); "pixel" measures them in [0, 1] pixel space. Perturbed
inputs are not clipped (VAT perturbs the network input, not a stored image).

The reference p(y | u) is a no-gradient pass over the unlabeled batch; it and the power-iteration
and adversarial passes run with BatchNorm statistics frozen (batch statistics are used but the
running averages are not updated), so only the clean [labeled, unlabeled] pass updates them.
Defaults (Yan et al. Table I): lambda_u = 0.3, xi = 1e-6, eps = 6, lr 0.003; USB adds entmin 0.06.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import entropy_loss, kl_div_from_logits
from lightning_ssl_backdoor.ssl.base import SSLModule


def l2_normalize(d: torch.Tensor) -> torch.Tensor:
    """``d_b / ||d_b||_2`` with the norm over every non-batch dimension."""
    norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
    return d / norm.view(-1, *([1] * (d.dim() - 1)))


class VAT(SSLModule):
    """VAT. ``xi``: finite-difference radius; ``eps``: adversarial radius; ``power_iterations``;
    ``entmin_weight``: entropy minimisation (0 disables it); ``rampup_*``: ramp of lambda_u."""

    unlabeled_views = ("weak",)

    def __init__(
        self, *, xi: float = 1e-6, eps: float = 6.0, power_iterations: int = 1,
        eps_space: str = "normalized", entmin_weight: float = 0.0, rampup_ratio: float = 0.4,
        rampup_shape: str = "linear", **kwargs: Any,
    ) -> None:
        if xi <= 0 or eps <= 0:
            raise ConfigError(f"VAT xi and eps must be positive, got xi={xi}, eps={eps}.")
        if power_iterations < 1:
            raise ConfigError(f"power_iterations must be >= 1, got {power_iterations}.")
        if eps_space not in ("normalized", "pixel"):
            raise ConfigError(f"eps_space must be 'normalized' or 'pixel', got {eps_space!r}.")
        if entmin_weight < 0:
            raise ConfigError(f"entmin_weight must be >= 0, got {entmin_weight}.")
        self.check_ramp(rampup_ratio, rampup_shape)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def _to_pixels(self, r: torch.Tensor) -> torch.Tensor:
        """A perturbation of the standardised input, expressed in pixel space (``r * std``)."""
        if self.hparams.eps_space == "pixel":
            return r
        std = getattr(self.model, "std", None)
        return r if std is None else r * std.to(r.dtype)

    def adversarial_perturbation(self, x: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
        """``r_adv`` (in the space of ``eps_space``, per-sample L2 norm ``eps``) by the power method.

        Runs under frozen BatchNorm statistics; leaves no gradient in the model's parameters.
        """
        xi, eps = float(self.hparams.xi), float(self.hparams.eps)
        d = torch.randn_like(x)
        with self.frozen_bn_stats(self.model), torch.enable_grad():
            for _ in range(int(self.hparams.power_iterations)):
                r = (xi * l2_normalize(d)).requires_grad_(True)
                adv = kl_div_from_logits(ref_logits, self.model(self._fmt(x + self._to_pixels(r))))
                d = torch.autograd.grad(adv, r)[0].detach()
        return eps * l2_normalize(d)

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("VAT needs unlabeled data: set data.mu >= 1.")
        x_u = unlabeled["weak"]
        logits_l, logits_u = self.forward_cat(labeled["weak"], x_u)
        sup = self.supervised_loss(logits_l, labeled["y"])
        with self.frozen_bn_stats(self.model):
            with torch.no_grad():
                ref = self.model(self._fmt(x_u))
            r_adv = self.adversarial_perturbation(x_u, ref)
            unsup = kl_div_from_logits(ref, self.model(self._fmt(x_u + self._to_pixels(r_adv))))
        weight = self.hparams.lambda_u * self.ramp(self.hparams.rampup_ratio, self.hparams.rampup_shape)
        loss = sup + weight * unsup
        out = {"sup_loss": sup.detach(), "unsup_loss": unsup.detach(), "unsup_weight": float(weight)}
        if self.hparams.entmin_weight > 0:
            ent = entropy_loss(logits_u)
            loss = loss + self.hparams.entmin_weight * ent
            out["entmin_loss"] = ent.detach()
        out.update(loss=loss, u_pseudo=ref.argmax(1))
        return out
