"""DBD stage 2: a linear head on a FROZEN backbone with a noise-robust loss, then the ranking.

:class:`LinearHead` loads the stage-1 (SimCLR) backbone and trains only ``Classifier.head`` with
symmetric cross entropy (alpha 0.1, beta 1; DBD Sec. 4.4) or, as alternatives (DBD App. N),
generalized cross entropy or active-passive loss NCE+RCE, using Adam at lr 0.002 (DBD App. B.3).
"Frozen" means both the weights and the BatchNorm statistics: the backbone's parameters do not
require gradients and the backbone stays in eval mode even while the module trains, so its
running mean / variance never move (a known bug of frozen backbones otherwise).

:func:`rank_by_loss` then scores every sample of a labeled set by the same per-sample loss under
its given label, on the unaugmented images with the model in eval mode, and marks the
``filter_rate`` fraction with the smallest loss as the high-credible set (ties broken by index):
over the whole set as in the paper, or within each given label (``per_class``). The global ranking
can drop a whole class on small data: the poisons relabeled as the target make every target-class
sample lose confidence, so all of them may rank in the upper half (seen on digits, where the
fine-tuned model then never predicted the target class); the per-class ranking keeps the
``filter_rate`` share of every label, and within the target label the poisons rank last.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.defenses.dbd.simclr import load_backbone_state, load_into
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import active_passive_loss, generalized_cross_entropy, symmetric_cross_entropy
from lightning_ssl_backdoor.ssl.base import SSLModule

ROBUST_LOSSES = ("sce", "gce", "apl", "ce")


def robust_loss_fn(name: str = "sce", **kwargs: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample loss ``fn(logits, targets) -> [B]``: ``sce`` (``alpha``, ``beta``), ``gce`` (``q``),
    ``apl`` (NCE+RCE, ``alpha``, ``beta``) or plain ``ce`` (DBD's "SS with CE" ablation)."""
    if name not in ROBUST_LOSSES:
        raise ConfigError(f"loss must be one of {list(ROBUST_LOSSES)}, got {name!r}.")
    allowed = {"sce": {"alpha", "beta"}, "gce": {"q"}, "apl": {"alpha", "beta"}, "ce": set()}[name]
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(f"loss {name!r} takes options {sorted(allowed)}, got {unknown}.")
    kw = {k: float(v) for k, v in kwargs.items()}
    if name == "sce":
        return lambda logits, y: symmetric_cross_entropy(logits, y, reduction="none", **kw)
    if name == "gce":
        return lambda logits, y: generalized_cross_entropy(logits, y, reduction="none", **kw)
    if name == "apl":
        return lambda logits, y: active_passive_loss(logits, y, reduction="none", **kw)
    return lambda logits, y: F.cross_entropy(logits, y.long(), reduction="none")


@torch.no_grad()
def per_sample_losses(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int = 512,
) -> torch.Tensor:
    """``loss_fn`` of every (uint8 or float [0, 1]) image under its label, model in eval mode
    (its train / eval mode is restored afterwards); a CPU float tensor ``[N]``."""
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        out = []
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size].to(dev)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            out.append(loss_fn(model(x), labels[s:s + batch_size].to(dev)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
    finally:
        model.train(was_training)


def lowest_fraction(losses: torch.Tensor, fraction: float, groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool mask of the ``round(fraction * N)`` smallest losses (stable: ties go to lower indices);
    with ``groups`` (one id per sample), of the ``round(fraction * N_g)`` smallest within each group."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ConfigError(f"filter_rate must be in [0, 1], got {fraction}.")
    losses = losses.cpu()
    keep = torch.zeros(len(losses), dtype=torch.bool)
    if groups is None:
        keep[torch.sort(losses, stable=True).indices[: int(round(float(fraction) * len(losses)))]] = True
        return keep
    groups = groups.cpu()
    if groups.shape != losses.shape:
        raise ConfigError(f"groups must have one entry per loss, got {tuple(groups.shape)} for {tuple(losses.shape)}.")
    for g in torch.unique(groups):
        rows = torch.nonzero(groups == g).flatten()
        keep[rows[lowest_fraction(losses[rows], fraction)]] = True
    return keep


def rank_by_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    filter_rate: float = 0.5,
    loss: str = "sce",
    loss_kwargs: Optional[dict] = None,
    batch_size: int = 512,
    per_class: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DBD's filtering: ``(losses [N], high_credible bool [N])``, the ``filter_rate`` lowest losses
    over the whole set (DBD's global ranking) or, with ``per_class``, within each given label."""
    fn = robust_loss_fn(loss, **(loss_kwargs or {}))
    losses = per_sample_losses(model, images, labels, fn, batch_size)
    return losses, lowest_fraction(losses, filter_rate, labels if per_class else None)


def loss_kwargs_of(
    loss: str, sce_alpha: float, sce_beta: float, gce_q: float, apl_alpha: float, apl_beta: float
) -> dict:
    """The keyword arguments of :func:`robust_loss_fn` for ``loss`` from the flat module options."""
    return {"sce": {"alpha": sce_alpha, "beta": sce_beta}, "gce": {"q": gce_q},
            "apl": {"alpha": apl_alpha, "beta": apl_beta}, "ce": {}}.get(loss, {})


class LinearHead(SSLModule):
    """Stage 2: train ``model.head`` on a frozen, eval-mode backbone with a noise-robust loss.

    Args (besides :class:`SSLModule`'s):
        backbone_checkpoint: file with the backbone weights (see
            :func:`~.simclr.load_backbone_state`); ``None`` keeps the initial backbone.
        loss: ``"sce"`` (default), ``"gce"``, ``"apl"`` or ``"ce"``; ``sce_alpha`` 0.1, ``sce_beta`` 1,
            ``gce_q`` 0.7, ``apl_alpha`` / ``apl_beta`` 1.
        lr: Adam learning rate (0.002); ``adam_weight_decay``: Adam's L2 (0).
    Training images get the weak (flip + shift) augmentation; only labeled batches are used.
    """

    uses_unlabeled = False

    def __init__(
        self,
        *,
        backbone_checkpoint: Optional[str] = None,
        loss: str = "sce",
        sce_alpha: float = 0.1,
        sce_beta: float = 1.0,
        gce_q: float = 0.7,
        apl_alpha: float = 1.0,
        apl_beta: float = 1.0,
        lr: float = 0.002,
        adam_weight_decay: float = 0.0,
        ema_decay: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        loss_fn = robust_loss_fn(loss, **loss_kwargs_of(loss, sce_alpha, sce_beta, gce_q, apl_alpha, apl_beta))
        if adam_weight_decay < 0:
            raise ConfigError(f"adam_weight_decay must be >= 0, got {adam_weight_decay}.")
        super().__init__(lr=lr, ema_decay=ema_decay, **kwargs)
        self.save_hyperparameters()
        self._loss_fn = loss_fn
        if backbone_checkpoint:
            load_into(self.model.backbone, load_backbone_state(backbone_checkpoint), "backbone", backbone_checkpoint)
            if self.ema_model is not None:
                self.ema_model.load_state_dict(self.model.state_dict())
        for m in [self.model] + ([self.ema_model] if self.ema_model is not None else []):
            m.backbone.requires_grad_(False)
            m.backbone.eval()

    def train(self, mode: bool = True) -> "LinearHead":
        """Lightning switches modules to train mode; the frozen backbones stay in eval mode."""
        super().train(mode)
        self.model.backbone.eval()
        if self.ema_model is not None:
            self.ema_model.backbone.eval()
        return self

    def sample_losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The configured per-sample loss."""
        return self._loss_fn(logits, y)

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        with torch.no_grad():
            feats = self.model.features(self._fmt(labeled["weak"]))
        logits = self.model.head(feats)
        loss = self.sample_losses(logits, labeled["y"]).mean()
        return {"loss": loss, "sup_loss": loss.detach()}

    def configure_optimizers(self):
        params = [p for p in self.model.head.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.adam_weight_decay)
