"""FlexMatch (Zhang et al., NeurIPS 2021, Sec. 3.1-3.3): FixMatch with curriculum pseudo-labelling.

Every unlabeled image (by dataset index, ``idx``) keeps the class last predicted for it with
confidence >= tau (-1 while none). The learning effect of class c (Eq. 4-5) is
sigma_c = #{i : selected_label_i = c}, normalised beta_c = sigma_c / max(max_c' sigma_c', N_unused)
with threshold warm-up (Sec. 3.3: the unused count takes part in the max), or by max_c' sigma_c'
without it; the flexible threshold is T_c = M(beta_c) * tau with the convex mapping
M(x) = x / (2 - x) (Eq. 7, "linear" M(x) = x optional). As in the authors' code, beta is only
recomputed while some count is below N (not all images in one bucket), and a sample's mask uses the
thresholds from before this batch's update. Loss = CE(labeled weak) +
lambda_u * (1 / (mu B)) * sum_b 1[max p(y | weak_b) >= T_{argmax_b}] * CE(argmax_b, p(y | strong_b)).

The per-sample state is allocated in ``setup`` from ``trainer.datamodule.split.unlabeled`` (or with
:meth:`reset_state`), saved in checkpoints, and updated from all ranks under DDP. The thresholds are
logged as ``train/threshold_c<k>``. Defaults (CIFAR-10): tau = 0.95, lambda_u = 1, warm-up on.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.ssl.base import SSLModule

MAPPINGS = ("convex", "linear")


def learning_effect(selected_label: torch.Tensor, num_classes: int, warmup: bool = True) -> Optional[torch.Tensor]:
    """Normalised learning effect beta ``[C]`` (Eq. 5, warm-up of Sec. 3.3), or ``None`` when the authors' code
    keeps the previous value (every image in one bucket, or no image selected without warm-up)."""
    counts = torch.bincount(selected_label + 1, minlength=num_classes + 1)
    if int(counts.max()) >= len(selected_label):
        return None
    denom = counts.max() if warmup else counts[1:].max()
    if int(denom) == 0:
        return None
    return counts[1:].float() / denom.float()


def updated_learning_effect(selected_label: torch.Tensor, num_classes: int, warmup: bool,
                            previous: torch.Tensor) -> torch.Tensor:
    """:func:`learning_effect` without a host sync (the training step's form): the counts by
    ``scatter_add_`` into ``num_classes + 1`` bins, and the cases where the authors' code keeps the
    previous beta chosen on the device with ``torch.where`` (equal to ``learning_effect`` or
    ``previous`` where it returns None; tested)."""
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=selected_label.device)
    counts.scatter_add_(0, selected_label + 1, torch.ones_like(selected_label))
    denom = counts.max() if warmup else counts[1:].max()
    keep = (counts.max() >= selected_label.numel()) | (denom == 0)
    beta = counts[1:].to(previous.dtype) / denom.clamp_min(1).to(previous.dtype)
    return torch.where(keep, previous, beta)


def class_thresholds(beta: torch.Tensor, tau: float, mapping: str = "convex") -> torch.Tensor:
    """``T_c = M(beta_c) * tau``, ``M(x) = x / (2 - x)`` (convex) or ``x`` (linear)."""
    return tau * (beta / (2.0 - beta) if mapping == "convex" else beta)


class FlexMatch(SSLModule):
    """FlexMatch. ``threshold``: tau; ``threshold_warmup``; ``mapping``: "convex" or "linear"."""

    unlabeled_views = ("weak", "strong")

    def __init__(
        self, *, threshold: float = 0.95, threshold_warmup: bool = True, mapping: str = "convex",
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold}.")
        if mapping not in MAPPINGS:
            raise ConfigError(f"mapping must be one of {list(MAPPINGS)}, got {mapping!r}.")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.register_buffer("selected_label", torch.zeros(0, dtype=torch.long))
        self.register_buffer("classwise_acc", torch.zeros(self.hparams.num_classes))

    # ----------------------------------------------------------------- state
    def reset_state(self, num_unlabeled: int) -> None:
        """Forget every selection: ``num_unlabeled`` images, none selected, all beta_c = 0."""
        dev = self.classwise_acc.device
        self.selected_label = torch.full((int(num_unlabeled),), -1, dtype=torch.long, device=dev)
        self.classwise_acc = torch.zeros(self.hparams.num_classes, device=dev)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        split = getattr(dm, "split", None)
        if split is not None and len(self.selected_label) != len(split.unlabeled):
            self.reset_state(len(split.unlabeled))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("state_dict", {}).get("selected_label")
        if saved is not None and saved.shape != self.selected_label.shape:
            self.reset_state(len(saved))

    def thresholds(self) -> torch.Tensor:
        return class_thresholds(self.classwise_acc, float(self.hparams.threshold), self.hparams.mapping)

    @torch.no_grad()
    def update_state(self, idx: torch.Tensor, max_prob: torch.Tensor, pred: torch.Tensor) -> None:
        """Record the confident predictions (gathered from every rank), then recompute beta."""
        if self._trainer is not None and self._trainer.world_size > 1:
            idx, max_prob, pred = (self.all_gather(t).flatten() for t in (idx, max_prob, pred))
        sel = max_prob >= float(self.hparams.threshold)
        # no boolean-mask indexing (a host sync): unselected entries are written back unchanged (an
        # index twice in one batch, at an epoch boundary of the sampler, keeps its last write)
        self.selected_label[idx] = torch.where(sel, pred, self.selected_label[idx])
        self.classwise_acc.copy_(updated_learning_effect(
            self.selected_label, int(self.hparams.num_classes), bool(self.hparams.threshold_warmup), self.classwise_acc))

    # ------------------------------------------------------------------ loss
    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("FlexMatch needs unlabeled data: set data.mu >= 1.")
        if len(self.selected_label) == 0:
            raise ConfigError(
                "FlexMatch tracks every unlabeled image: train with an SSLDataModule or call reset_state(n) first."
            )
        logits_l, logits_w, logits_s = self.forward_cat(labeled["weak"], unlabeled["weak"], unlabeled["strong"])
        sup = self.supervised_loss(logits_l, labeled["y"])
        thresholds = self.thresholds()
        with torch.no_grad():
            max_prob, pseudo = logits_w.detach().float().softmax(1).max(1)
            mask = max_prob >= thresholds[pseudo]
        ce = F.cross_entropy(logits_s, pseudo, reduction="none")
        unsup = (ce * mask).sum() / max(1, len(ce))
        self.update_state(unlabeled["idx"], max_prob, pseudo)
        out = {
            "loss": sup + self.hparams.lambda_u * unsup,
            "sup_loss": sup.detach(),
            "unsup_loss": unsup.detach(),
            "mask_rate": mask.float().mean(),
            "u_pseudo": pseudo,
            "u_mask": mask,
        }
        out.update({f"threshold_c{k}": t for k, t in enumerate(thresholds)})
        return out
