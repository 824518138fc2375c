"""``defense: dbd``: Huang et al., "Backdoor Defense via Decoupling the Training Process" (ICLR 2022).

Three chained Lightning stages, each trained through the runner's cached, resumable
``ctx.train`` in its own folder under ``ctx.stage_dir`` (``stage1_simclr``, ``stage2_linear``,
``stage3_finetune``), each leaving ``model.pt`` (the Classifier's state dict) for the next. The
expensive SimCLR stage is, by default (``share_simclr``), kept beside ``ctx.stage_dir`` instead, in
``dbd_simclr-<key>`` keyed by a hash of the training images and every stage-1 setting, so rows that
differ only in later stages (filtering, fine-tuning) reuse one pre-training (do not run two such
rows in parallel processes before it exists):

1. :class:`~.simclr.SimCLR` on the images of the labeled AND unlabeled sets, labels removed
   (skipped when ``backbone_checkpoint`` brings a pre-trained backbone);
2. :class:`~.linear_head.LinearHead`: the head alone on the frozen backbone, SCE loss, over the
   labeled set with its given labels;
3. :class:`~.finetune.DBDFineTune`: MixMatch fine-tuning of the whole model; the model reported is
   the last one of this stage (its test metrics are the row's ``acc`` / ``asr`` / ``asr_cond``).

What is ranked in each threat model (``threat_model``; ``auto`` reads the attack's manifest: an
attack on the labeled pool means poisoned labels, otherwise poisoned unlabeled data):

- ``poisoned_labels`` (the paper's: the attacker relabels part of the labeled training data): the
  LABELED set is ranked by the stage-2 SCE loss, and re-ranked (all of it) after every stage-3
  "epoch"; its lowest-loss ``filter_rate`` (50%) stays labeled, its other half loses its labels and
  joins the unlabeled images (which never carry labels, so are never ranked);
- ``poisoned_unlabeled`` (ours: poisons hide among unlabeled images, the labeled set is trusted):
  nothing is ranked; the head of stage 2 is trained on the labeled set and stage 3 starts from the
  whole labeled set as labeled data and all unlabeled images as unlabeled data; the defense then
  rests on the purified backbone alone.

``defense_info`` carries the per-epoch filtering report (poisons among the high-credible samples,
DBD Table 23), the stage-2 model's test metrics (DBD's "SS with SCE" ablation) and each stage's
steps, seconds and folder.

Which images the defender uses (``use_unlabeled``): ``true`` (default) adds the split's unlabeled
images to SimCLR (stage 1) and to the unlabeled side of stage 3, as an SSL training set offers them;
``false`` uses the labeled set alone (DBD's own defender, who holds one labeled training set and
nothing else); ``auto`` is ``false`` under ``poisoned_labels`` and ``true`` under
``poisoned_unlabeled`` (where dropping the unlabeled set would drop the poisons, and the threat),
so one ``dbd`` entry serves a config that mixes a supervised poison-label threat model with an SSL
one (``configs/experiments/cifar10_dbd.yaml``).

Parallel rows (``jobs`` > 1) that share one SimCLR stage take turns: the first trains it under a
lock (``.stage1.simclr.lock`` in its folder, :func:`lightning_ssl_backdoor.io_lock.waiting_lock`), the others
wait and then read it from the cache instead of training it twice side by side.

Options: ``threat_model``, ``filter_rate`` (alpha), ``filter_per_class`` (rank within each given
label instead of globally; see :mod:`.linear_head`), ``use_unlabeled``, ``backbone_checkpoint``, ``share_simclr`` and
one dict per stage:
``simclr`` / ``linear`` / ``finetune`` hold ``steps`` (stage 1 and 3 default: the row's
``trainer.max_steps``), ``batch_size`` (512 / 128 / 64), ``val_check_interval``, stage 2 also
``epochs`` (10, used when ``steps`` is not given), and any option of the stage's module.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_ssl_backdoor.data import ImageSet, SSLSplit
from lightning_ssl_backdoor.data.artifacts import sha256_array
from lightning_ssl_backdoor.defenses.dbd.finetune import DBDFineTune
from lightning_ssl_backdoor.defenses.dbd.linear_head import LinearHead
from lightning_ssl_backdoor.defenses.dbd.simclr import ExportModel, SimCLR
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.io_lock import waiting_lock
from lightning_ssl_backdoor.spec import Spec, config_hash
from lightning_ssl_backdoor.defenses.base import Defense, DefenseContext, register_defense
from lightning_ssl_backdoor.ssl.base import SSLModule

THREAT_MODELS = ("auto", "poisoned_labels", "poisoned_unlabeled")
USE_UNLABELED = (True, False, "auto")
#: the row's model settings the stages inherit (architecture and augmentation, not the optimiser)
INHERITED_MODEL_KEYS = ("arch", "model", "model_kwargs", "channels_last", "weak_pad", "strong_n", "strong_m")
#: per-stage keys that configure the trainer / data rather than the module
STAGE_KEYS = {"steps", "batch_size", "val_check_interval", "epochs"}
STAGES = {
    "simclr": (SimCLR, {"steps", "batch_size", "val_check_interval"}, 512),
    "linear": (LinearHead, STAGE_KEYS, 128),
    "finetune": (DBDFineTune, {"steps", "batch_size", "val_check_interval"}, 64),
}
#: module options the defense sets itself
OWNED = {"simclr": set(), "linear": {"backbone_checkpoint"},
         "finetune": {"init_checkpoint", "filter_rate", "rank", "per_class"}}


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def module_options(cls: type) -> set[str]:
    """Keyword options accepted by ``cls`` and its bases down to :class:`SSLModule`."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or not issubclass(klass, SSLModule):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self":
                names.add(p.name)
    return names - {"num_classes", "in_channels"}


def training_images(split: SSLSplit) -> ImageSet:
    """Every training image once, labels removed: the labeled set, then the unlabeled images that
    are not pixel-identical copies of labeled ones (``include_labeled_in_unlabeled`` splits)."""
    unl = split.unlabeled
    keep = torch.ones(len(unl), dtype=torch.bool)
    if len(unl) and len(split.labeled):
        pos = {int(s): i for i, s in enumerate(split.labeled_indices.tolist()) if int(s) >= 0}
        for j, s in enumerate(split.unlabeled_indices.tolist()):
            i = pos.get(int(s))
            if i is not None and torch.equal(unl.images[j], split.labeled.images[i]):
                keep[j] = False
    return ImageSet.concat([split.labeled.unlabeled(), unl.subset(torch.nonzero(keep).flatten())])


@register_defense
class DBD(Defense):
    """Decoupling-based backdoor defense: SimCLR -> frozen-backbone SCE head -> MixMatch fine-tune."""

    name = "dbd"
    requires = ("features", "head", "backbone")  # stages move the backbone, train the head on features

    def __init__(
        self,
        threat_model: str = "auto",
        filter_rate: float = 0.5,
        filter_per_class: bool = False,
        use_unlabeled: bool | str = True,
        backbone_checkpoint: Optional[str] = None,
        share_simclr: bool = True,
        simclr: Optional[dict] = None,
        linear: Optional[dict] = None,
        finetune: Optional[dict] = None,
    ) -> None:
        if threat_model not in THREAT_MODELS:
            raise ConfigError(f"dbd threat_model must be one of {list(THREAT_MODELS)}, got {threat_model!r}.")
        if not 0.0 < float(filter_rate) < 1.0:
            raise ConfigError(f"dbd filter_rate must be strictly between 0 and 1, got {filter_rate}.")
        if not any(use_unlabeled is v for v in USE_UNLABELED) and use_unlabeled != "auto":
            raise ConfigError(f"dbd use_unlabeled must be true, false or auto, got {use_unlabeled!r}.")
        self.use_unlabeled = use_unlabeled
        self.threat_model, self.filter_rate = threat_model, float(filter_rate)
        self.filter_per_class, self.share_simclr = bool(filter_per_class), bool(share_simclr)
        self.backbone_checkpoint = backbone_checkpoint
        self.options: dict[str, dict] = {}
        for stage, given in (("simclr", simclr), ("linear", linear), ("finetune", finetune)):
            opts = dict(given or {})
            cls, keys, _ = STAGES[stage]
            allowed = module_options(cls) | keys
            bad = sorted((set(opts) - allowed) | (set(opts) & OWNED[stage]))
            if bad:
                raise ConfigError(
                    f"dbd {stage} options {bad} are not accepted; use the stage keys {sorted(keys)} or "
                    f"options of {cls.__name__} other than {sorted(OWNED[stage]) or 'none'}."
                )
            for k in ("steps", "batch_size", "val_check_interval", "epochs"):
                if k in opts and (not isinstance(opts[k], int) or opts[k] < 1):
                    raise ConfigError(f"dbd {stage}.{k} must be a positive integer, got {opts[k]!r}.")
            self.options[stage] = opts

    # ------------------------------------------------------------------ helpers
    def resolve_threat_model(self, split: SSLSplit) -> str:
        if self.threat_model != "auto":
            return self.threat_model
        pool = (getattr(split, "attack", None) or {}).get("pool")
        return "poisoned_unlabeled" if pool == "unlabeled" else "poisoned_labels"

    def uses_unlabeled(self, threat: str) -> bool:
        """Whether the split's unlabeled images join stages 1 and 3 (see the module docstring)."""
        if self.use_unlabeled == "auto":
            return threat == "poisoned_unlabeled"
        return bool(self.use_unlabeled)

    def _stage_settings(self, ctx: DefenseContext, stage: str, extra_args: dict, default_steps: int):
        """(algorithm spec, model args, trainer config, data config) of one stage."""
        cls, _, default_bs = STAGES[stage]
        opts = dict(self.options[stage])
        steps = int(opts.pop("steps", default_steps))
        bs = int(opts.pop("batch_size", default_bs))
        val_every = int(opts.pop("val_check_interval", min(ctx.trainer.val_check_interval, steps)))
        opts.pop("epochs", None)
        return (
            Spec(_class_path(cls), {**opts, **extra_args}),
            {k: v for k, v in ctx.model_args.items() if k in INHERITED_MODEL_KEYS},
            ctx.with_trainer(max_steps=steps, val_check_interval=val_every),
            replace(ctx.data, batch_size=bs, mu=0),
        )

    def _stage(self, ctx: DefenseContext, stage: str, split: SSLSplit, extra_args: dict,
               default_steps: int, history: bool = False) -> tuple[dict, Path]:
        algorithm, model_args, trainer, data = self._stage_settings(ctx, stage, extra_args, default_steps)
        name = {"simclr": "stage1_simclr", "linear": "stage2_linear", "finetune": "stage3_finetune"}[stage]
        workdir = ctx.stage_dir / name
        cb = ExportModel(workdir / "model.pt", workdir / "filtering.json" if history else None)
        res = ctx.train(split, name=name, algorithm=algorithm, model_args=model_args, trainer=trainer,
                        data=data, extra_callbacks=[cb])
        if not (workdir / "model.pt").is_file():
            raise ConfigError(
                f"the cached stage {workdir} has no model.pt; delete that folder to train the stage again."
            )
        return res, workdir

    def simclr_backbone(self, ctx: DefenseContext, split: Optional[SSLSplit] = None) -> tuple[Path, dict[str, Any], float]:
        """Stage 1: ``(model.pt of the SimCLR-trained Classifier, info, seconds)`` on ``split``'s
        images (default ``ctx.split``), or the given ``backbone_checkpoint``. Self-training with
        SimCLR (``defense: self_training_simclr``, Pal et al. Algorithm 2) reuses this stage
        through a DBD instance. Parallel rows sharing the stage take turns on a lock."""
        if self.backbone_checkpoint:
            backbone = Path(self.backbone_checkpoint)
            if not backbone.is_file():
                raise ConfigError(f"dbd backbone_checkpoint {backbone} does not exist.")
            return backbone, {"provided_backbone": str(backbone)}, 0.0
        split = ctx.split if split is None else split
        images = training_images(split)
        s1 = SSLSplit(labeled=images, unlabeled=images.subset([]), test=split.test,
                      labeled_indices=torch.arange(len(images)), unlabeled_indices=torch.zeros(0, dtype=torch.long),
                      seed=split.seed)
        ctx1 = ctx
        if self.share_simclr:  # keyed by what determines it, so rows that differ later share it
            spec, margs, tcfg, dcfg = self._stage_settings(ctx, "simclr", {}, ctx.trainer.max_steps)
            key = config_hash("dbd-stage1", sha256_array(images.images.numpy()), asdict(spec), margs,
                              asdict(tcfg), asdict(dcfg), ctx.seed)
            ctx1 = replace(ctx, stage_dir=ctx.stage_dir.parent / f"dbd_simclr-{key}")
        with waiting_lock(ctx1.stage_dir / "stage1.simclr"):  # parallel rows sharing it take turns
            r1, w1 = self._stage(ctx1, "simclr", s1, {}, ctx.trainer.max_steps)
        info = {"steps": r1["steps"], "fit_seconds": round(r1["fit_seconds"], 1),
                "num_images": len(images), "folder": str(w1)}
        return w1 / "model.pt", info, r1["fit_seconds"]

    # ----------------------------------------------------------------------- run
    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        self.check_model_args(ctx)
        threat = self.resolve_threat_model(ctx.split)
        split = ctx.split if self.uses_unlabeled(threat) else _labeled_only(ctx.split)
        ranked = "nothing (labeled set trusted)"
        if threat == "poisoned_labels":
            ranked = "the labeled set (all of it, every epoch)"
        info: dict[str, Any] = {
            "threat_model": threat,
            "ranked": ranked,
            "filter_rate": self.filter_rate,
            "filter_per_class": self.filter_per_class,
            "uses_unlabeled": self.uses_unlabeled(threat),
            "replaces_algorithm": ctx.algorithm.display,
        }
        backbone, info["stage1"], seconds = self.simclr_backbone(ctx, split)
        # stage 2: linear head on the frozen backbone
        lin_bs = int(self.options["linear"].get("batch_size", STAGES["linear"][2]))
        epochs = int(self.options["linear"].get("epochs", 10))
        r2, w2 = self._stage(ctx, "linear", split, {"backbone_checkpoint": str(backbone)},
                             max(1, math.ceil(epochs * len(split.labeled) / lin_bs)))
        seconds += r2["fit_seconds"]
        info["stage2"] = {"steps": r2["steps"], "fit_seconds": round(r2["fit_seconds"], 1),
                          "test": r2["test"], "folder": str(w2)}
        # stage 3: MixMatch fine-tuning with re-filtering
        r3, w3 = self._stage(
            ctx, "finetune", split,
            {"init_checkpoint": str(w2 / "model.pt"), "filter_rate": self.filter_rate,
             "rank": threat == "poisoned_labels", "per_class": self.filter_per_class},
            ctx.trainer.max_steps, history=True,
        )
        seconds += r3["fit_seconds"]
        filtering = json.loads((w3 / "filtering.json").read_text()) if (w3 / "filtering.json").is_file() else []
        info["stage3"] = {"steps": r3["steps"], "fit_seconds": round(r3["fit_seconds"], 1), "folder": str(w3)}
        info["filtering"] = filtering
        if filtering:
            first, last = filtering[0], filtering[-1]
            info["stage2_poisons_in_high"] = f"{first['poisons_in_high']}/{first['num_high']}"
            info["final_poisons_in_high"] = f"{last['poisons_in_high']}/{last['num_high']}"
            info["num_poisons_ranked"] = last["num_poisons"]
        res = dict(r3)
        res["fit_seconds"] = seconds
        res["defense_info"] = {**ctx.info, **info}
        return res


def _labeled_only(split: SSLSplit) -> SSLSplit:
    """``split`` with an empty unlabeled set (``use_unlabeled`` false: the labeled set alone)."""
    none = torch.zeros(0, dtype=torch.long)
    changes: dict[str, Any] = {"unlabeled": split.unlabeled.subset(none), "unlabeled_indices": none}
    if getattr(split, "unlabeled_poison_mask", None) is not None:
        changes["unlabeled_poison_mask"] = torch.zeros(0, dtype=torch.bool)
    return replace(split, **changes)
