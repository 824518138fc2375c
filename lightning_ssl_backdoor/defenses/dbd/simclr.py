"""SimCLR (Chen et al., ICML 2020): DBD's stage 1, also usable alone for self-supervised pre-training.

The backbone of the configured :class:`~lightning_ssl_backdoor.models.Classifier` (its ``features``)
feeds a projection MLP ``feature_dim -> feature_dim -> proj_dim`` (Linear, ReLU, Linear; 512-512-128
for ResNet-18); the loss is the symmetric NT-Xent of :func:`lightning_ssl_backdoor.losses.nt_xent_loss`
at temperature 0.5 over two :class:`~.views.SimCLRAugment` views of every training image, both
views in one forward pass. Labels are never read: every image of a training batch (the labeled
batch and, when the data module yields one, the unlabeled batch) is just an image. SGD with
momentum, weight decay on weights only, linear warm-up then a cosine decay to zero (DBD App. A:
lr 0.4, momentum 0.9, weight decay 5e-4, batch 512). The classifier head stays untrained; validation
and test steps do nothing (a SimCLR model has no meaningful classification accuracy).

Stand-alone: ``ssl-backdoor fit --model lightning_ssl_backdoor.defenses.dbd.SimCLR`` with the usual
``SSLDataModule``; :func:`save_model_state` / :func:`load_backbone_state` move the learned backbone
between stages and runs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from lightning_ssl_backdoor._lightning import Callback
from torch import nn

from lightning_ssl_backdoor.data.artifacts import atomic_write_json
from lightning_ssl_backdoor.defenses.dbd.views import SimCLRAugment
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import nt_xent_loss
from lightning_ssl_backdoor.ssl.base import SSLModule


class ProjectionHead(nn.Module):
    """SimCLR's projection MLP ``in_dim -> hidden_dim -> out_dim`` (Linear, ReLU, Linear)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ConfigError(f"projection sizes must be positive, got {in_dim}-{hidden_dim}-{out_dim}.")
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class SimCLR(SSLModule):
    """Self-supervised contrastive pre-training of the configured model's backbone.

    Args (besides :class:`SSLModule`'s arch / model / optimiser settings):
        temperature: NT-Xent temperature (0.5).
        proj_dim, proj_hidden: projection output size (128) and hidden size (``feature_dim``).
        crop_scale, flip_p, jitter, jitter_p, gray_p, blur_p: the view distribution
            (:class:`~.views.SimCLRAugment`).
    ``lr`` (0.4), ``momentum`` (0.9), ``nesterov`` (False), ``weight_decay`` (5e-4),
    ``warmup_steps`` (0) and ``ema_decay`` (None) default to SimCLR's values; ``schedule`` is ``"cosine"`` (to zero over
    ``max_steps``) or ``"constant"``.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        proj_dim: int = 128,
        proj_hidden: Optional[int] = None,
        crop_scale: Sequence[float] = (0.2, 1.0),
        flip_p: float = 0.5,
        jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p: float = 0.5,
        lr: float = 0.4,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        ema_decay: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"SimCLR temperature must be positive, got {temperature}.")
        super().__init__(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         ema_decay=ema_decay, **kwargs)
        self.save_hyperparameters()
        dim = self.model.feature_dim
        self.projector = ProjectionHead(dim, int(proj_hidden or dim), int(proj_dim))
        self.views = SimCLRAugment(scale=crop_scale, flip_p=flip_p, jitter=jitter, jitter_p=jitter_p,
                                   gray_p=gray_p, blur_p=blur_p)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Projection ``z`` of float [0, 1] images."""
        return self.projector(self.model.features(self._fmt(x)))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if "labeled" not in batch:
            return super().on_after_batch_transfer(batch, dataloader_idx)
        self._restore_rng_if_resumed()
        parts = [batch["labeled"]["x"]]
        if "unlabeled" in batch:
            parts.append(batch["unlabeled"]["x"])
        x = torch.cat(parts).float().div_(255.0)
        return {"x1": self.views(x), "x2": self.views(x)}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        n = len(batch["x1"])
        z = self.project(torch.cat([batch["x1"], batch["x2"]]))
        loss = nt_xent_loss(z[:n], z[n:], float(self.hparams.temperature))
        self.log("train/loss", loss.detach(), batch_size=n, prog_bar=True)
        return loss

    # a SimCLR model has no classifier to evaluate
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        return None

    def on_validation_epoch_end(self) -> None:
        return None

    def test_step(self, batch: dict, batch_idx: int) -> None:
        return None

    def on_test_epoch_end(self) -> None:
        return None

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in list(self.model.parameters()) + list(self.projector.parameters()):
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, momentum=self.hparams.momentum,
            nesterov=bool(self.hparams.nesterov) and self.hparams.momentum > 0,
        )
        total, warm = self.total_steps(), int(self.hparams.warmup_steps)
        cosine = self.hparams.schedule == "cosine"

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if not cosine:
                return 1.0
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# --------------------------------------------------------------------------- weights between stages
def save_model_state(model: nn.Module, path: Path | str) -> Path:
    """Write ``model.state_dict()`` (CPU tensors) to ``path`` atomically (temporary file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return path


def _read_state(path: Path | str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give the path of a saved model or backbone.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(
            f"cannot read checkpoint {path} as tensors ({type(e).__name__}); save a state_dict."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConfigError(f"checkpoint {path} holds no state_dict of tensors.")
    return obj


def load_backbone_state(path: Path | str) -> dict[str, torch.Tensor]:
    """The backbone's ``state_dict`` from a file holding a Lightning checkpoint (``model.backbone.*``),
    a :class:`Classifier` state dict (``backbone.*``) or a bare backbone state dict."""
    state = _read_state(path)
    for prefix in ("model.backbone.", "backbone."):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return state


def load_classifier_state(path: Path | str) -> dict[str, torch.Tensor]:
    """A whole :class:`Classifier` state dict from a Lightning checkpoint (``model.*``) or a plain one."""
    state = _read_state(path)
    if any(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path | str) -> None:
    """``module.load_state_dict(state)`` (strict) with a one-sentence error on a mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "keys differ"
        raise ConfigError(
            f"{what} checkpoint {path} does not fit the configured architecture ({first[:200]}); "
            "use the same arch and model_kwargs as the run that saved it."
        ) from None


class ExportModel(Callback):
    """At the end of ``fit``, write the module's ``model`` state dict to ``path`` (and, if the module
    keeps a ``filter_history``, that list as JSON to ``history_path``), on rank 0, atomically."""

    def __init__(self, path: Path | str, history_path: Optional[Path | str] = None) -> None:
        self.path = Path(path)
        self.history_path = None if history_path is None else Path(history_path)

    def on_fit_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if not trainer.is_global_zero:
            return
        save_model_state(pl_module.model, self.path)
        if self.history_path is not None:
            atomic_write_json(self.history_path, list(getattr(pl_module, "filter_history", [])))
