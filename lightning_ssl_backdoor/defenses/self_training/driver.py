"""Iterative self-training with strong augmentation during pseudo-labelling (Pal et al., paper
002, Algorithm 1; Algorithm 2 enters through ``run(first_pool=...)``).

A driver, not a LightningModule: every training phase is a Lightning ``Trainer.fit`` of the
:class:`~lightning_ssl_backdoor.ssl.supervised.Supervised` module on a labeled set built here.

    teacher <- model trained on D_L (or the one given)
    for n in 1..N:
        y_l* <- teacher(T(x_l)),  y_u* <- teacher(x_u)       (which parts, and under T: options)
        D_UL <- {(x_l, y_l*)} U {(x_u, y_u*)}
        D_n  <- per class c, the k n |D_UL| / C most confident examples predicted as c
        warm-start: keep training the same model on D_n  (it becomes the next teacher)
    final model <- trained from scratch on D_N

With ``module["ema_decay"]`` set, every model keeps an EMA of its weights (theta_ema <- d theta_ema
+ (1 - d) theta per step) and the EMA weights are the ones that label, are evaluated and are returned,
as the runner reports an undefended model that keeps one; the EMA carries over the warm-started rounds.

The paper's defaults (Sec. 4.3 and 5.1), which :class:`SelfTrainingConfig` keeps: N = 4 rounds,
k = 0.3 (so D_4 is the whole pool: 4 x 0.3 >= 1), the pool D_UL is the labeled AND the unlabeled
images (the labeled images are relabelled by the teacher: "pseudo-labeling on D_L U D_U"), T is
applied to the labeled images only ("we propose to only pseudo-label a part of the total data (in
our case, D_L)" under T, to limit the loss of standard accuracy), and there is no supervised loss
("we do not include any supervisory loss ... because including such a loss helps in successful
backdoor creation"). Training lengths in the paper are epochs (pre-training 200, each round 150,
the final model 300 from scratch); here they are optimiser steps (``*_steps``).

T is "RCS0.5 + VFlip": a random crop of half the image area, resized back, then a vertical flip of
EVERY image (:class:`~lightning_ssl_backdoor.augment.CropScaleVFlip`, ``vflip_prob = 1``; batched
on the device, per-sample draws). With ``supervised_loss`` D_L with its given labels is added to
every training set (standard self-training). Images keep their original pixels in D_n: T only
changes what the teacher sees when it labels them. Per-round statistics use the hidden true labels
and poison masks for reporting only; nothing is selected on them or on the test set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lightning_ssl_backdoor._lightning import TensorBoardLogger, pl
import torch
from torch import nn

from lightning_ssl_backdoor.augment import CropScaleVFlip
from lightning_ssl_backdoor.data import ImageSet, SSLDataModule, SSLSplit, triggered_copy
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.metrics import attack_success_rate, clean_accuracy
from lightning_ssl_backdoor.models import Classifier
from lightning_ssl_backdoor.ssl.supervised import Supervised

__all__ = ["PARTS", "SelfTraining", "SelfTrainingConfig", "SelfTrainingResult", "self_train"]

PARTS = ("labeled", "unlabeled", "both")


@dataclass
class SelfTrainingConfig:
    """Options of :func:`self_train` (defaults: Pal et al. Sec. 4.3 / 5.1, N = 4, k = 0.3, pool
    D_L U D_U, T = RCS0.5 + VFlip on the labeled images, no supervised loss).

    ``pseudo_label``: which parts make up D_UL; ``augment``: which parts the teacher labels under T
    (``None``: none, the paper's "semi-supervised baseline"); ``views``: how many independent draws
    of T the teacher's probabilities are averaged over (1, the paper: one draw); ``supervised_loss``:
    also train on D_L with its true labels; ``*_steps``: optimiser steps of each phase; ``module``:
    keyword arguments of :class:`Supervised` (arch, lr, weight_decay, ema_decay, weak_pad, ...).
    """

    rounds: int = 4
    fraction: float = 0.3
    pseudo_label: str = "both"
    augment: Optional[str] = "labeled"
    crop_scale: float = 0.5
    vflip_prob: float = 1.0
    views: int = 1
    supervised_loss: bool = False
    pretrain_steps: int = 500
    round_steps: int = 500
    final_steps: int = 1000
    batch_size: int = 64
    eval_batch_size: int = 512
    module: dict = field(default_factory=lambda: {"ema_decay": None})
    accelerator: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds (N) must be >= 1, got {self.rounds}.")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction (k) must be in (0, 1], got {self.fraction}.")
        if self.pseudo_label not in PARTS:
            raise ConfigError(f"pseudo_label must be one of {list(PARTS)}, got {self.pseudo_label!r}.")
        if self.augment is not None and self.augment not in PARTS:
            raise ConfigError(f"augment must be null or one of {list(PARTS)}, got {self.augment!r}.")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 1:
            raise ConfigError(f"views must be a positive integer, got {self.views!r}.")
        if min(self.pretrain_steps, self.round_steps, self.final_steps) < 1:
            raise ConfigError("pretrain_steps, round_steps and final_steps must all be >= 1.")
        if not 0.0 < self.crop_scale <= 1.0 or not 0.0 <= self.vflip_prob <= 1.0:
            raise ConfigError(f"crop_scale must be in (0, 1] and vflip_prob in [0, 1], got {self.crop_scale}, {self.vflip_prob}.")


@dataclass
class SelfTrainingResult:
    """The final model (trained from scratch on D_N), the teacher's statistics per round."""

    model: Classifier
    rounds: list[dict[str, Any]]
    final: dict[str, Any]


def _accuracy(pool: dict[str, torch.Tensor], from_labeled: bool) -> Optional[float]:
    """Share of the pool's examples from D_L (or D_U) whose pseudo-label is their true class."""
    part = pool["from_labeled"] == from_labeled
    return float((pool["pred"][part] == pool["truth"][part]).float().mean()) if bool(part.any()) else None


def _uses(part: str, option: Optional[str]) -> bool:
    return option is not None and option in (part, "both")


class SelfTraining:
    """Runs Alg. 1 on an :class:`SSLSplit` (or a PoisonedSplit, whose masks feed the statistics)."""

    def __init__(self, split: SSLSplit, config: Optional[SelfTrainingConfig] = None,
                 tensorboard: Optional[tuple] = None) -> None:
        self.split, self.cfg = split, config or SelfTrainingConfig()
        self.tensorboard = tensorboard  # (folder, run name): each model its run "<run name>/<model>"
        self.cfg.validate()
        self.transform = CropScaleVFlip(scale=self.cfg.crop_scale, flip_prob=self.cfg.vflip_prob)
        self.num_classes = split.num_classes

    # ----------------------------------------------------------- training
    def new_module(self) -> Supervised:
        kwargs = {"ema_decay": None, **self.cfg.module}
        return Supervised(num_classes=self.num_classes, in_channels=int(self.split.test.images.shape[1]), **kwargs)

    def logger(self, run: str):
        """The TensorBoard logger of the model ``run`` (``teacher``, ``student-round<n>``, ``final``)."""
        if self.tensorboard is None:
            return False
        folder, name = self.tensorboard
        return TensorBoardLogger(str(folder), name=f"{name}/{run}", version="", default_hp_metric=False)

    def fit(self, module: Supervised, train: ImageSet, steps: int, run: str = "model") -> Supervised:
        """``steps`` optimiser steps of ``module`` on ``train`` (labels = the targets it learns),
        logged as the TensorBoard run ``run`` when the driver has a TensorBoard folder."""
        n = len(train)
        data = SSLSplit(train, train, self.split.test, torch.arange(n), torch.arange(n), self.cfg.seed)
        dm = SSLDataModule(split=data, batch_size=min(self.cfg.batch_size, n), mu=0,
                           eval_batch_size=self.cfg.eval_batch_size, seed=self.cfg.seed)
        trainer = pl.Trainer(
            max_steps=steps, accelerator=self.cfg.accelerator, devices=1, logger=self.logger(run),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=dm)
        return module

    @staticmethod
    def weights(module: Supervised) -> nn.Module:
        """The classifier of ``module`` that labels and is evaluated: its EMA when it keeps one."""
        return module.ema_model if module.ema_model is not None else module.model

    # --------------------------------------------------------- prediction
    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor, augment: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Confidence and arg-max class of ``model`` on uint8 ``images`` (optionally under T)."""
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device
        conf, pred = [], []
        for s in range(0, len(images), self.cfg.eval_batch_size):
            x = images[s : s + self.cfg.eval_batch_size].to(dev).float().div_(255.0)
            if augment:  # mean over `views` draws of T (Eq.: p(x) = 1/V sum_v softmax(f(T_v(x))))
                p = torch.stack([model(self.labeling_view(x, generator)).softmax(1) for _ in range(self.cfg.views)]).mean(0)
            else:
                p = model(x).softmax(1)
            c, k = p.max(1)
            conf.append(c.cpu())
            pred.append(k.cpu())
        model.train(was_training)
        return torch.cat(conf), torch.cat(pred)

    def labeling_view(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """T(x): what the teacher sees of an image it labels under augmentation (float [0, 1])."""
        return self.transform(x, generator=generator)

    def select(self, conf: torch.Tensor, pred: torch.Tensor, round_n: int) -> torch.Tensor:
        """Indices of the ``floor(k n |D_UL| / C)`` most confident examples of each predicted class."""
        share = self.cfg.fraction * round_n
        if share >= 1.0:  # the whole pseudo-labelled set is used up
            return torch.arange(len(conf))
        per_class = int(math.floor(share * len(conf) / self.num_classes))
        chosen = []
        for c in range(self.num_classes):
            idx = torch.nonzero(pred == c).flatten()
            order = torch.argsort(conf[idx], descending=True, stable=True)
            chosen.append(idx[order[:per_class]])
        return torch.sort(torch.cat(chosen)).values

    # -------------------------------------------------------------- rounds
    def pseudo_labeled_pool(self, model: nn.Module, generator: torch.Generator,
                            given: Optional[dict[str, tuple[torch.Tensor, torch.Tensor]]] = None) -> dict[str, torch.Tensor]:
        """D_UL with the teacher's labels, the hidden truth and the poison flags of every example;
        ``given`` (``{"labeled": (conf, pred), "unlabeled": (conf, pred)}``) replaces the teacher's
        predictions (Algorithm 2's first round: the cluster pseudo-labels)."""
        parts = []
        for name in ("labeled", "unlabeled"):
            if not _uses(name, self.cfg.pseudo_label):
                continue
            s: ImageSet = getattr(self.split, name)
            if given is not None:
                conf, pred = (t.cpu() for t in given[name])
            else:
                conf, pred = self.predict(model, s.images, _uses(name, self.cfg.augment), generator)
            mask = getattr(self.split, f"{name}_poison_mask", None)
            parts.append({
                "images": s.images, "conf": conf, "pred": pred, "truth": s.targets,
                "poison": torch.zeros(len(s), dtype=torch.bool) if mask is None else mask.cpu(),
                "from_labeled": torch.full((len(s),), name == "labeled"),
            })
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def round_stats(self, pool: dict[str, torch.Tensor], sel: torch.Tensor, round_n: int) -> dict[str, Any]:
        pred, truth, poison = pool["pred"][sel], pool["truth"][sel], pool["poison"][sel]
        target = getattr(self.split, "target", None)
        stats: dict[str, Any] = {
            "round": round_n,
            "pool_size": len(pool["pred"]),
            "selected": len(sel),
            "selected_per_class": torch.bincount(pred, minlength=self.num_classes).tolist(),
            "pseudo_label_accuracy_pool": float((pool["pred"] == pool["truth"]).float().mean()),
            "pseudo_label_accuracy_pool_labeled": _accuracy(pool, True),
            "pseudo_label_accuracy_pool_unlabeled": _accuracy(pool, False),
            "pseudo_label_accuracy_selected": float((pred == truth).float().mean()) if len(sel) else None,
            "poisoned_selected": int(poison.sum()),
        }
        if target is not None and int(poison.sum()) > 0:
            stats["poisoned_selected_as_target"] = float((pred[poison] == int(target)).float().mean())
        return stats

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Clean accuracy and (PoisonedSplit) ASR of ``model`` on the test set, in percent."""
        gen = torch.Generator().manual_seed(0)
        test = self.split.test
        _, clean = self.predict(model, test.images, False, gen)
        out = {"clean_accuracy": 100.0 * clean_accuracy(clean, test.targets)}
        trigger, target = getattr(self.split, "trigger", None), getattr(self.split, "target", None)
        if trigger is not None and target is not None:
            _, trig = self.predict(model, triggered_copy(test.images, trigger), False, gen)
            out["asr"] = 100.0 * attack_success_rate(trig, test.targets, int(target))
            out["asr_conditioned"] = 100.0 * attack_success_rate(trig, test.targets, int(target), clean_preds=clean)
        return out

    def run(self, teacher: Optional[Classifier] = None,
            first_pool: Optional[dict[str, tuple[torch.Tensor, torch.Tensor]]] = None) -> SelfTrainingResult:
        """Algorithm 1 from ``teacher`` (trained on D_L here when ``None``); ``first_pool`` gives
        round 1's pseudo-labels and confidences instead of the teacher (Algorithm 2)."""
        cfg = self.cfg
        pl.seed_everything(cfg.seed, verbose=False)
        gen = torch.Generator().manual_seed(cfg.seed)
        module = self.new_module()
        if teacher is not None:
            module.model.load_state_dict(teacher.state_dict())
            if module.ema_model is not None:
                module.ema_model.load_state_dict(teacher.state_dict())
        else:
            self.fit(module, self.split.labeled, cfg.pretrain_steps, run="teacher")
        rounds: list[dict[str, Any]] = []
        train: Optional[ImageSet] = None
        for n in range(1, cfg.rounds + 1):
            pool = self.pseudo_labeled_pool(self.weights(module), gen, first_pool if n == 1 else None)
            sel = self.select(pool["conf"], pool["pred"], n)
            stats = self.round_stats(pool, sel, n)
            stats["labels_from"] = "clusters" if (n == 1 and first_pool is not None) else "teacher"
            stats["teacher"] = self.evaluate(self.weights(module))
            train = ImageSet(pool["images"][sel], pool["pred"][sel], list(self.split.classes))
            if cfg.supervised_loss:
                train = ImageSet.concat([train, ImageSet(self.split.labeled.images, self.split.labeled.labels, list(self.split.classes))])
            self.fit(module, train, cfg.round_steps, run=f"student-round{n}")  # warm start: the same weights keep training
            stats["student"] = self.evaluate(self.weights(module))
            rounds.append(stats)
        pl.seed_everything(cfg.seed, verbose=False)
        final = self.new_module()
        assert train is not None
        self.fit(final, train, cfg.final_steps, run="final")
        model = self.weights(final).eval()
        return SelfTrainingResult(model=model, rounds=rounds, final={**self.evaluate(model), "config": asdict(cfg)})


def self_train(split: SSLSplit, config: Optional[SelfTrainingConfig] = None, teacher: Optional[Classifier] = None) -> SelfTrainingResult:
    """Pal et al.'s Algorithm 1 on ``split``; see :class:`SelfTraining`."""
    return SelfTraining(split, config).run(teacher)
