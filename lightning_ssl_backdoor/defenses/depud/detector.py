"""DePuD stage 1: the poison data detector (Yan et al., TIFS 2021, Sec. V-B, Eq. 22-23).

A binary classifier is trained to tell trusted labeled images (category 0) from untrusted unlabeled
images (category 1). Clean images of both sets look alike, so a strongly regularised network can
only separate them where the unlabeled set carries something the labeled set never shows: a
trigger repeated over many poisons. The objective (Eq. 23) is

    E_{(x~, y~) ~ Mixup(D_tmp, alpha_mix)} [ CE(f(x~), y~) ] + l1 * ||theta||_1 + l2 * ||theta||_2^2

(the l2 term is the squared norm, i.e. classic weight decay; the paper calls it "l2 weight decay").
Each step sees a balanced batch: the runner's SSL stream with ``mu = 1`` yields as many unlabeled
as labeled images, and any surplus of one side is cut. The batch is augmented (``view``: the row's
weak flip / crop by default), then mix-up pairs are drawn inside it with one
lambda ~ Beta(alpha_mix, alpha_mix) per sample. The score of an image is the detector's probability
of category 1 (:func:`detector_scores`).

:class:`PoisonDetector` is an :class:`~lightning_ssl_backdoor.ssl.base.SSLModule` (so it trains
through the runner's cached, resumable ``ctx.train``); its validation / test passes report the mean
score of clean and of triggered test images, a held-out view of what the detector learned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning_ssl_backdoor._lightning import pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from lightning_ssl_backdoor.data.artifacts import atomic_write
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.ssl.base import SSLModule

DETECTOR_VIEWS = ("raw", "weak", "strong")


class PoisonDetector(SSLModule):
    """Labeled (0) vs unlabeled (1) classifier with mix-up and L1 + L2 penalties (Eq. 23).

    Args (beyond :class:`SSLModule`, whose ``num_classes`` is forced to 2):
        alpha_mix: Beta parameter of mix-up (4.0 in the paper; 0 turns mix-up off).
        l1, l2: weights of the L1 norm and squared L2 norm of all parameters (1e-6 each).
        view: the images the detector sees: ``"raw"``, ``"weak"`` (the row's flip / crop) or
            ``"strong"`` (weak + per-sample RandAugment + Cutout: keeps a detector trained on a
            tiny labeled set from memorising it).
    """

    unlabeled_views = ()  # the views are built in compute_losses, once for the balanced batch

    def __init__(
        self,
        *,
        alpha_mix: float = 4.0,
        l1: float = 1e-6,
        l2: float = 1e-6,
        view: str = "weak",
        **kwargs: Any,
    ) -> None:
        if alpha_mix < 0:
            raise ConfigError(f"detector alpha_mix must be >= 0 (0 disables mix-up), got {alpha_mix}.")
        if l1 < 0 or l2 < 0:
            raise ConfigError(f"detector l1 and l2 penalties must be >= 0, got {l1} and {l2}.")
        if view not in DETECTOR_VIEWS:
            raise ConfigError(f"detector view must be one of {list(DETECTOR_VIEWS)}, got {view!r}.")
        kwargs["num_classes"] = 2
        kwargs.setdefault("ema_decay", None)
        kwargs.setdefault("weight_decay", 0.0)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    # ----------------------------------------------------------------- training
    def weight_penalty(self) -> torch.Tensor:
        """``l1 * sum |theta| + l2 * sum theta^2`` over every trainable parameter of the model."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        l1 = torch.stack([p.abs().sum() for p in params]).sum()
        l2 = torch.stack([p.pow(2).sum() for p in params]).sum()
        return float(self.hparams.l1) * l1 + float(self.hparams.l2) * l2

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        if unlabeled is None:
            raise ConfigError("the poison detector needs unlabeled data: train it with data.mu >= 1.")
        x0, x1 = labeled["x"], unlabeled["x"]
        n = min(len(x0), len(x1))
        x = self.make_view(self.hparams.view, torch.cat([x0[:n], x1[:n]]))
        y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)]).to(x.device)
        x_mix, t_mix = mixup(x, F.one_hot(y, 2).to(x.dtype), float(self.hparams.alpha_mix))
        logits = self.model(self._fmt(x_mix))
        ce = soft_cross_entropy(logits, t_mix)
        penalty = self.weight_penalty()
        return {"loss": ce + penalty, "mix_loss": ce.detach(), "penalty": penalty.detach()}

    # ---------------------------------------------------------------- evaluation
    def _build_eval_metrics(self) -> None:
        self._eval_metrics = nn.ModuleDict(
            {f"{s}_{w}": MeanMetric() for s in ("val", "test") for w in ("score_clean", "score_triggered")}
        )

    def _eval_step(self, batch: dict, stage: str) -> None:
        assert self._eval_metrics is not None
        self._eval_metrics[f"{stage}_score_clean"].update(self.model(self._fmt(batch["x"])).softmax(1)[:, 1])
        if "x_trig" in batch:
            self._eval_metrics[f"{stage}_score_triggered"].update(
                self.model(self._fmt(batch["x_trig"])).softmax(1)[:, 1]
            )

    def _eval_epoch_end(self, stage: str) -> None:
        assert self._eval_metrics is not None
        for key, metric in self._eval_metrics.items():
            if key.startswith(stage + "_") and metric.update_called:
                self.log(f"{stage}/{key.split('_', 1)[1]}", metric.compute(), sync_dist=False)
                metric.reset()


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 22: ``lam * a + (1 - lam) * b`` for inputs and soft targets, ``b`` a random permutation of
    the batch, one ``lam ~ Beta(alpha, alpha)`` per sample; ``alpha == 0`` returns the inputs."""
    if alpha <= 0:
        return x, targets
    conc = torch.tensor(float(alpha), device=x.device)
    lam = torch.distributions.Beta(conc, conc).sample((len(x),)).to(x.dtype)
    perm = torch.randperm(len(x), device=x.device)
    lx = lam.view(-1, *([1] * (x.ndim - 1)))
    lt = lam.view(-1, 1)
    return lx * x + (1 - lx) * x[perm], lt * targets + (1 - lt) * targets[perm]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_c targets_c * log softmax(logits)_c``."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


@torch.no_grad()
def detector_scores(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 512,
    device: Optional[torch.device | str] = None,
) -> torch.Tensor:
    """Probability of category 1 (untrusted) for each image (uint8 or float [0, 1]), on CPU."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].to(device)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        out.append(model(x).softmax(1)[:, 1].float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


class SaveModelState(pl.Callback):
    """Writes ``pl_module.model.state_dict()`` to ``path`` (atomically) when fitting ends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return

        state = {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}
        atomic_write(self.path, lambda fh: torch.save(state, fh))


def load_model_state(model: nn.Module, path: Path) -> nn.Module:
    """Load a state dict written by :class:`SaveModelState` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model state {path} does not exist; delete its stage folder to train it again.")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
