"""``mcr``: mode connectivity repair (Zhao, Chen, Das, Ramamurthy and Lin, "Bridging Mode
Connectivity in Loss Landscapes and Adversarial Robustness", ICLR 2020).

Algorithm (Sec. 2-3): connect two end-point models ``w_0``, ``w_1`` by a quadratic Bezier curve
``phi_theta(t) = (1 - t)^2 w_0 + 2 t (1 - t) theta + t^2 w_1`` (Eq. 1) and train only the control
point ``theta`` on the clean data: ``min_theta E_(t ~ U[0, 1]) E_(x, y) CE(f_(phi_theta(t))(x), y)``
(Eq. 2), one ``t`` per minibatch; then deploy the model at a point ``t`` of the path, whose weights
keep the clean accuracy while the backdoor (a property of the end points) fades. The paper's
end points are two backdoored models; with the single model an SSL run yields, the second end point
here is a copy fine-tuned on the labeled set (the paper's one-model variant). Parameters follow the
curve; buffers (BatchNorm statistics) are recomputed on the clean data at the deployed ``t``.
``theta`` starts at the midpoint ``(w_0 + w_1) / 2``. Defaults (the curve-training schedule is not in
the seed papers): SGD ``lr = 0.01``, 10 epochs for the curve and for the fine-tuned end point,
``t = 0.4``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lightning_ssl_backdoor.defenses.base import ModelDefense, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import (
    to_defense_device,
    as_float,
    check_benign,
    check_images_labels,
    check_positive,
    clone,
    context_labeled,
    context_seed,
    make_generator,
    sgd_train,
)
from lightning_ssl_backdoor.defenses.baselines.ft import epochs_to_steps
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["ModeConnectivityRepair", "bezier_point", "mcr_repair", "recompute_batchnorm"]


def bezier_point(w0: torch.Tensor, theta: torch.Tensor, w1: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """``(1 - t)^2 w0 + 2 t (1 - t) theta + t^2 w1`` (MCR Eq. 1)."""
    return (1 - t) ** 2 * w0 + 2 * t * (1 - t) * theta + t**2 * w1


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative mean) on ``images``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    device = next(model.parameters()).device
    model.train()
    for s in range(0, images.shape[0], batch_size):
        model(as_float(images[s : s + batch_size]).to(device))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    return model.eval()


def mcr_repair(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    endpoint: Optional[nn.Module] = None,
    t: float = 0.4,
    curve_steps: int = 500,
    endpoint_steps: int = 500,
    lr: float = 0.01,
    batch_size: int = 64,
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """The model at ``t`` on a Bezier curve from ``model`` to ``endpoint`` trained on ``(images, labels)``."""
    check_images_labels(images, labels, "MCR images")
    if not 0.0 <= float(t) <= 1.0:
        raise ConfigError(f"MCR t must lie in [0, 1], got {t}.")
    g = make_generator(0, generator)
    if endpoint is None:
        endpoint = sgd_train(clone(model), images, labels, endpoint_steps, lr, batch_size=batch_size, generator=g,
                             log_name="endpoint")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    w1 = {n: p.detach().clone() for n, p in endpoint.named_parameters() if n in names}
    if w0.keys() != w1.keys() or any(w0[n].shape != w1[n].shape for n in names):
        raise ConfigError("MCR end points must share one architecture; pass a copy of the model as `endpoint`.")
    curve = clone(model)  # holds theta as its parameters and its own BatchNorm buffers
    with torch.no_grad():
        for n, p in curve.named_parameters():
            if n in w0:
                p.copy_((w0[n] + w1[n]) / 2)
    thetas = dict(curve.named_parameters())

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = torch.rand((), generator=g).item()
        params = {n: bezier_point(w0[n], thetas[n], w1[n], s) for n in names}
        return F.cross_entropy(functional_call(m, params, (x,), strict=False), y)

    sgd_train(curve, images, labels, curve_steps, lr, batch_size=batch_size, generator=g, loss_fn=loss_fn,
              log_name="curve")
    repaired = clone(model)
    with torch.no_grad():
        for n, p in repaired.named_parameters():
            if n in w0:
                p.copy_(bezier_point(w0[n], thetas[n].detach(), w1[n], float(t)))
    return recompute_batchnorm(repaired, images)


@register_defense
class ModeConnectivityRepair(ModelDefense):
    """``defense: mcr``: ``repair(model, ctx)`` trains a curve on the defender's benign labeled data."""

    name = "mcr"

    def __init__(self, t: float = 0.4, lr: float = 0.01, epochs: float = 10, endpoint_epochs: float = 10,
                 batch_size: int = 64, benign: str = "labeled") -> None:
        check_positive(lr=lr, epochs=epochs, endpoint_epochs=endpoint_epochs, batch_size=batch_size)
        self.benign = check_benign(benign)
        self.t, self.lr, self.epochs, self.endpoint_epochs, self.batch_size = float(t), float(lr), epochs, endpoint_epochs, int(batch_size)

    def repair(self, model: nn.Module, ctx: Any) -> nn.Module:
        model = to_defense_device(model, ctx)
        images, labels = context_labeled(ctx, self.benign)
        n = len(labels)
        return mcr_repair(
            model, images, labels, None, self.t, epochs_to_steps(self.epochs, n, self.batch_size),
            epochs_to_steps(self.endpoint_epochs, n, self.batch_size), self.lr, self.batch_size,
            torch.Generator().manual_seed(context_seed(ctx)),
        )
