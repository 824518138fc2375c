"""``defense: self_training`` and ``defense: self_training_simclr``: Pal et al. (paper 002),
"Towards Understanding How Self-training Tolerates Data Backdoor Poisoning", Algorithms 1 and 2.

Both replace the row's training by the self-training driver (:mod:`.driver`):

- **Algorithm 1** (``self_training``): the teacher is "a model pre-trained on the labeled data":
  the runner trains ``supervised`` on ``ctx.split.labeled`` with the row's model settings (cached in
  ``stage_dir/teacher``; when the row's algorithm is ``supervised`` it is exactly the undefended
  model). Then N = 4 rounds with k = 0.3: the teacher labels T(x_l) (T = RCS0.5 + VFlip, every
  labeled image flipped; ``views: V`` averages its probabilities over V draws of T, 1 = the
  paper) and x_u, the per-class top ``k n |D_UL| / C`` most confident examples
  form D_n, the model keeps training on D_n (warm start) and becomes the next teacher; finally a
  model is trained from scratch on D_N and evaluated by the runner (``ctx.evaluate``). No
  supervised loss (Sec. 4.3).
- **Algorithm 2** (``self_training_simclr``): a SimCLR encoder trained on D_L U D_U (DBD's stage 1,
  :meth:`~lightning_ssl_backdoor.defenses.dbd.DBD.simclr_backbone`, reused, not copied; options
  ``simclr`` as DBD's), embeddings h = f(x_l) L2-normalised, C clusters by k-means
  (:mod:`.kmeans`), each cluster labelled by majority vote of its labeled members' GIVEN labels
  (:mod:`.clusters`; ``assignment: hungarian`` for a one-to-one map instead); round 1 pseudo-labels
  every image of D_L U D_U by its nearest centre (confidence: cosine similarity to it), the later
  rounds by the model, as in Algorithm 1. Algorithm 2's box forward-passes ``x_l U x_u`` without T
  in the later rounds, so ``augment`` defaults to ``null`` there (``labeled`` follows the text's
  "the rest of the self-training proceeds as described in Section 4.3").

Training lengths: the paper trains 200 epochs (teacher), 150 per round and 300 from scratch; here
steps, by default the row's ``trainer.max_steps`` for the teacher and 0.75x / 1.5x of it for each
round / the final model (the same 200 : 150 : 300 ratio). Batch size: the row's. The model
settings are the row's (architecture, optimiser, weak augmentation) without ``init_weights`` (the
final model starts from scratch) and, by default, without EMA (the paper's models keep none);
``ema_decay: row`` gives every model of the driver the row's EMA (labelling, evaluation and the final
model then use EMA weights, as the runner reports the undefended row), a float sets it. The result is cached in
``stage_dir/self_training.json``; ``defense_info`` holds every round's statistics (pool size,
selected per class, pseudo-label accuracy on the pool, on its labeled and unlabeled parts and on
the selection, poisons selected and how many as the target, teacher and student test metrics) and,
for Algorithm 2, the clustering's agreement with the given labels.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.data.artifacts import atomic_write_json
from lightning_ssl_backdoor.data.cache_entry import read_json_entry
from lightning_ssl_backdoor.defenses.base import Defense, DefenseContext, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import penultimate_features
from lightning_ssl_backdoor.defenses.dbd import DBD, load_classifier_state
from lightning_ssl_backdoor.defenses.dbd.defense import INHERITED_MODEL_KEYS
from lightning_ssl_backdoor.defenses.dbd.simclr import load_into
from lightning_ssl_backdoor.defenses.self_training.clusters import (
    ASSIGNMENTS,
    agreement_matrix,
    cluster_pseudo_labels,
    hungarian_labels,
    majority_labels,
)
from lightning_ssl_backdoor.defenses.self_training.driver import PARTS, SelfTraining, SelfTrainingConfig
from lightning_ssl_backdoor.defenses.self_training.kmeans import kmeans
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.spec import Spec
from lightning_ssl_backdoor.ssl import Supervised

__all__ = ["SelfTrainingDefense", "SelfTrainingSimCLR"]

#: the row's model settings the driver's Supervised modules keep (EMA and init_weights are dropped)
MODULE_KEYS = ("arch", "model", "model_kwargs", "channels_last", "lr", "momentum", "nesterov", "weight_decay",
               "schedule", "warmup_steps", "weak_pad", "weak_flip")
#: the paper's epochs: teacher 200, each round 150, final model 300 (Sec. 5.1)
ROUND_FACTOR, FINAL_FACTOR = 150 / 200, 300 / 200


def _positive_int(name: str, value: Optional[int]) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"self_training {name} must be a positive integer or null, got {value!r}.")
    return value


@register_defense
class SelfTrainingDefense(Defense):
    """``defense: self_training`` (Pal et al. Algorithm 1); see the module docstring."""

    name = "self_training"
    default_augment: Optional[str] = "labeled"

    def __init__(self, rounds: int = 4, fraction: float = 0.3, pseudo_label: str = "both",
                 augment: Optional[str] = "default", crop_scale: float = 0.5, vflip_prob: float = 1.0,
                 views: int = 1, supervised_loss: bool = False, teacher_steps: Optional[int] = None,
                 round_steps: Optional[int] = None, final_steps: Optional[int] = None,
                 batch_size: Optional[int] = None, ema_decay: Optional[float | str] = None) -> None:
        self.augment = self.default_augment if augment == "default" else augment
        self.config = SelfTrainingConfig(rounds=int(rounds), fraction=float(fraction), pseudo_label=pseudo_label,
                                         augment=self.augment, crop_scale=float(crop_scale),
                                         vflip_prob=float(vflip_prob), views=views, supervised_loss=bool(supervised_loss))
        self.config.validate()
        self.teacher_steps = _positive_int("teacher_steps", teacher_steps)
        self.round_steps = _positive_int("round_steps", round_steps)
        self.final_steps = _positive_int("final_steps", final_steps)
        self.batch_size = _positive_int("batch_size", batch_size)
        if not (ema_decay is None or ema_decay == "row" or (isinstance(ema_decay, (int, float))
                                                            and not isinstance(ema_decay, bool) and 0.0 < ema_decay < 1.0)):
            raise ConfigError(f"self_training ema_decay must be null, 'row' or a number in (0, 1), got {ema_decay!r}.")
        self.ema_decay = ema_decay

    # ------------------------------------------------------------------ pieces
    def driver_config(self, ctx: DefenseContext) -> SelfTrainingConfig:
        steps = int(ctx.trainer.max_steps)
        module = {k: v for k, v in ctx.model_args.items() if k in MODULE_KEYS}
        ema = ctx.model_args.get("ema_decay") if self.ema_decay == "row" else self.ema_decay
        return replace(
            self.config,
            round_steps=self.round_steps or max(1, round(ROUND_FACTOR * steps)),
            final_steps=self.final_steps or max(1, round(FINAL_FACTOR * steps)),
            pretrain_steps=self.teacher_steps or steps,
            batch_size=self.batch_size or int(ctx.data.batch_size),
            eval_batch_size=int(ctx.data.eval_batch_size),
            module={**module, "ema_decay": ema},
            accelerator=str(ctx.trainer.accelerator),
            seed=int(ctx.seed),
        )

    def train_teacher(self, ctx: DefenseContext) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Algorithm 1's input, "a model trained on D_L": ``supervised`` on the labeled set (the
        row's own spec when the row is supervised, and then the undefended row's very training,
        shared through ``ctx.train_undefended``), through the runner's cached training."""
        algorithm = ctx.algorithm if ctx.algorithm.name == "supervised" else Spec("supervised")
        if algorithm == ctx.algorithm and not self.teacher_steps:  # the undefended row's model: share it
            res = ctx.train_undefended(name="teacher")
        else:
            trainer = ctx.with_trainer(max_steps=self.teacher_steps) if self.teacher_steps else ctx.trainer
            res = ctx.train(ctx.split, name="teacher", algorithm=algorithm, trainer=trainer, save_model=True)
        teacher = replace(ctx, algorithm=algorithm).load_model(res).evaluated
        return teacher, {"test": res["test"], "steps": res["steps"], "fit_seconds": round(res["fit_seconds"], 1)}

    def first_pool(self, ctx: DefenseContext, cfg: SelfTrainingConfig, info: dict) -> Optional[dict]:
        """Round 1's pseudo-labels instead of the teacher's (``None``: the teacher labels them)."""
        return None

    # ----------------------------------------------------------------------- run
    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        self.check_model_args(ctx)
        done = ctx.stage_dir / "self_training.json"
        cached = read_json_entry(done, lambda v: isinstance(v, dict))  # a damaged entry: set aside, rebuilt
        if cached is not None:
            return cached
        cfg = self.driver_config(ctx)
        t0 = time.perf_counter()
        teacher, teacher_info = self.train_teacher(ctx)
        info: dict[str, Any] = {"teacher": teacher_info}
        first = self.first_pool(ctx, cfg, info)
        result = SelfTraining(ctx.split, cfg, tensorboard=ctx.tensorboard).run(teacher=teacher.cpu(), first_pool=first)
        seconds = time.perf_counter() - t0
        test = ctx.evaluate(result.model)
        info.update({"algorithm": self.name, "rounds": result.rounds, "config": asdict(cfg),
                     "replaces_algorithm": ctx.algorithm.display})
        res = {
            "test": test,
            "history": [],
            "fit_seconds": seconds,
            "steps": int(teacher_info["steps"]) + cfg.rounds * cfg.round_steps + cfg.final_steps,
            "has_ema": False,  # one model is evaluated (the EMA weights when ema_decay is set)
            "defense_info": {**ctx.info, **info},
        }
        atomic_write_json(done, res)
        return res


@register_defense
class SelfTrainingSimCLR(SelfTrainingDefense):
    """``defense: self_training_simclr`` (Pal et al. Algorithm 2); see the module docstring.

    Extra options: ``simclr`` (DBD's stage-1 options: ``steps``, ``batch_size``, SimCLR module
    options), ``share_simclr`` and ``backbone_checkpoint`` (as DBD's), ``assignment``
    (``majority``, the paper's, or ``hungarian``), ``kmeans_restarts`` (10) and ``kmeans_iters`` (300).
    """

    name = "self_training_simclr"
    default_augment = None
    requires = ("features", "backbone")  # the SimCLR stage trains the row's backbone, then reads its features

    def __init__(self, simclr: Optional[dict] = None, share_simclr: bool = True,
                 backbone_checkpoint: Optional[str] = None, assignment: str = "majority",
                 kmeans_restarts: int = 10, kmeans_iters: int = 300, **options: Any) -> None:
        super().__init__(**options)
        if self.config.pseudo_label != "both":
            raise ConfigError("self_training_simclr pseudo-labels D_L U D_U (Algorithm 2); leave pseudo_label at 'both'.")
        if assignment not in ASSIGNMENTS:
            raise ConfigError(f"assignment must be one of {list(ASSIGNMENTS)}, got {assignment!r}.")
        _positive_int("kmeans_restarts", kmeans_restarts)
        _positive_int("kmeans_iters", kmeans_iters)
        self.dbd = DBD(share_simclr=share_simclr, backbone_checkpoint=backbone_checkpoint, simclr=simclr)
        self.assignment, self.kmeans_restarts, self.kmeans_iters = assignment, int(kmeans_restarts), int(kmeans_iters)

    def encoder(self, ctx: DefenseContext) -> tuple[torch.nn.Module, dict[str, Any]]:
        """f(.): the SimCLR-trained Classifier (its ``features`` are the embeddings h)."""
        path, info, _ = self.dbd.simclr_backbone(ctx)
        split = ctx.split
        margs = {k: v for k, v in ctx.model_args.items() if k in INHERITED_MODEL_KEYS}
        model = Supervised(num_classes=split.num_classes, in_channels=int(split.labeled.images.shape[1]),
                           ema_decay=None, **margs).model
        load_into(model, load_classifier_state(path), "SimCLR", path)
        return model.eval(), info

    def first_pool(self, ctx: DefenseContext, cfg: SelfTrainingConfig, info: dict) -> Optional[dict]:
        split, c = ctx.split, ctx.split.num_classes
        model, info["simclr"] = self.encoder(ctx)
        h_l = penultimate_features(model, split.labeled.images, cfg.eval_batch_size)
        h_u = penultimate_features(model, split.unlabeled.images, cfg.eval_batch_size)
        km = kmeans(F.normalize(h_l, dim=1), c, n_init=self.kmeans_restarts, iters=self.kmeans_iters, seed=ctx.seed)
        given = split.labeled.labels
        rule = majority_labels if self.assignment == "majority" else hungarian_labels
        cluster_class = rule(km.assign, given, c, c)
        conf_l, pred_l = cluster_pseudo_labels(h_l, km.centres, cluster_class)
        conf_u, pred_u = cluster_pseudo_labels(h_u, km.centres, cluster_class)
        truth = split.labeled.targets
        info["clusters"] = {
            "assignment": self.assignment,
            "cluster_class": cluster_class.tolist(),
            "sizes": torch.bincount(km.assign, minlength=c).tolist(),
            "classes_without_cluster": sorted(set(range(c)) - set(cluster_class.tolist())),
            "inertia": round(km.inertia, 4),
            "agreement_with_given_labels": round(float((pred_l == given).float().mean()), 4),
            "agreement_with_true_labels": round(float((pred_l == truth).float().mean()), 4),
            "counts": agreement_matrix(km.assign, given, c, c).tolist(),
        }
        return {"labeled": (conf_l, pred_l), "unlabeled": (conf_u, pred_u)}
