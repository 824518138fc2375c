"""The data-stage shape the two feature-space detectors share (spectral signatures, activation
clustering): train, score, report, filter, retrain.

:class:`FeatureDetector` is a :class:`~lightning_ssl_backdoor.defenses.base.DataDefense`:

1. train the row's algorithm on the attacked split through the runner (``ctx.train(split,
   name="detector", save_model=True)``, cached in ``stage_dir/detector``; ``feature_steps`` steps,
   default the row's ``trainer.max_steps``) and load it (``ctx.load_model``; the EMA copy when the
   algorithm keeps one and ``use_ema``);
2. score the suspected pool on that model's penultimate features, per (pseudo-)class, with the
   subclass's :meth:`detect`. Which pool (``pool``): ``unlabeled`` (the SSL threat model; the classes
   are the model's pseudo-labels, argmax), ``labeled`` (poison-label attacks: the classes are the
   given labels, as in Tran et al. and Chen et al.), or ``auto``: the pool the row's attack poisoned,
   read from the attack's manifest (``split.attack["pool"]``), unlabeled for a clean row;
3. report AUROC / precision / recall / FPR of the scores and the flagged set against the pool's
   poison mask (:func:`lightning_ssl_backdoor.metrics.detection_metrics`) in ``defense_info``;
4. drop the flagged images from that pool; the runner then retrains the row's algorithm on the rest.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.defenses.base import DataDefense, DefenseContext
from lightning_ssl_backdoor.defenses.baselines._common import to_defense_device
from lightning_ssl_backdoor.defenses.detector import DetectionResult
from lightning_ssl_backdoor.defenses.influence_defense import detection_info, filter_pool, filter_unlabeled
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["FeatureDetector", "POOLS", "filter_labeled", "resolve_pool"]

POOLS = ("auto", "unlabeled", "labeled")


def resolve_pool(pool: str, split: SSLSplit) -> str:
    """``unlabeled`` / ``labeled``: the pool ``pool`` names, or for ``auto`` the one the attack poisoned."""
    if pool != "auto":
        return pool
    return "labeled" if (getattr(split, "attack", None) or {}).get("pool") == "labeled" else "unlabeled"


def filter_labeled(split: SSLSplit, keep: torch.Tensor) -> SSLSplit:
    """A copy of ``split`` whose labeled set holds only the rows where ``keep`` is ``True`` (images,
    labels, source indices and poison mask together; for an attack on the labeled pool the poisons'
    ``attack["arrays"]["position"]`` is remapped, ``-1`` for a removed poison)."""
    return filter_pool(split, keep, "labeled", "lower its removal rate")


class FeatureDetector(DataDefense):
    """Base of ``spectral`` and ``activation_clustering`` (see the module docstring).

    Subclasses implement ``detect(model, images, labels=None, seed=0) -> DetectionResult`` (pseudo-
    labels from ``model`` when ``labels`` is None) and call :meth:`_detector_options`.
    """

    requires = ("features",)  # the detectors score penultimate features

    def _detector_options(self, pool: str, feature_steps: Optional[int], use_ema: bool) -> None:
        if pool not in POOLS:
            raise ConfigError(f"{self.name} pool must be one of {list(POOLS)}, got {pool!r}.")
        if feature_steps is not None and (isinstance(feature_steps, bool) or not isinstance(feature_steps, int)
                                          or feature_steps < 1):
            raise ConfigError(f"{self.name} feature_steps must be a positive integer or null, got {feature_steps!r}.")
        self.pool, self.feature_steps, self.use_ema = pool, feature_steps, bool(use_ema)

    def detect(self, model: nn.Module, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
               seed: int = 0) -> DetectionResult:
        raise NotImplementedError

    def feature_model(self, split: SSLSplit, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        """The row's algorithm trained on the attacked ``split``: the undefended row's own training
        when nothing differs from it (:meth:`DefenseContext.train_undefended`), else cached in
        ``stage_dir/detector``."""
        steps = self.feature_steps or ctx.trainer.max_steps
        trainer = ctx.with_trainer(
            max_steps=steps,
            val_check_interval=min(ctx.trainer.val_check_interval, steps),
            checkpoint_every_n_steps=min(ctx.trainer.checkpoint_every_n_steps, steps),
        )
        if split is ctx.split and steps == ctx.trainer.max_steps:  # the undefended row's model: share its training
            res = ctx.train_undefended(name="detector")
        else:
            res = ctx.train(split, name="detector", trainer=trainer, save_model=True)
        models = ctx.load_model(res)
        use_ema = self.use_ema and models.ema is not None
        model = self.check_model(models.ema if use_ema else models.raw)
        return to_defense_device(model, ctx).eval(), {"steps": res.get("steps"), "test": res.get("test", {}),
                              "weights": "ema" if use_ema else "raw"}

    def filter(self, split: SSLSplit, ctx: DefenseContext) -> tuple[SSLSplit, dict[str, Any]]:
        model, model_info = self.feature_model(split, ctx)
        pool = resolve_pool(self.pool, split)
        if pool == "labeled":
            images, labels = split.labeled.images, split.labeled.labels
            poison = getattr(split, "labeled_poison_mask", None)
        else:
            images, labels = split.unlabeled.images, None
            poison = getattr(split, "unlabeled_poison_mask", None)
        poison = torch.zeros(len(images), dtype=torch.bool) if poison is None else poison.detach().cpu().bool()
        det = self.detect(model, images, labels, seed=int(ctx.seed))
        keep = det.keep_mask.detach().cpu()
        info: dict[str, Any] = {"method": self.name, "pool": pool,
                                "classes": "given labels" if pool == "labeled" else "pseudo-labels"}
        info.update(detection_info(det.scores, keep, poison))
        info.update({k: v for k, v in det.info.items() if k not in info})
        info["feature_model"] = model_info
        kept = filter_labeled(split, keep) if pool == "labeled" else filter_unlabeled(split, keep)
        return kept, info
