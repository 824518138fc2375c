"""``defense: depud``: detection-and-purification defense (Yan et al., TIFS 2021, Sec. V).

Three steps, each cached (stages 1 and 2 in the detector folder: ``ctx.stage_dir``, or with
``share_detector`` (default) a sibling ``depud-<key>`` folder keyed by the data, the detector
options, the row's model / data / trainer settings, the seed, ``purify`` and ``cut``, so rows that
differ only in the purification (``mode``, ``sigma``) train one detector):

1. ``detector/``: :class:`~.detector.PoisonDetector` (labeled = 0 vs unlabeled = 1, mix-up, L1 + L2,
   balanced batches) trained through the runner's resumable ``ctx.train``; its weights are kept in
   ``detector/model.pt``;
2. ``masks.npz``: the detector's score and Grad-CAM confidence mask (class 1, ``last_conv``) of every
   unlabeled image, computed on the device in chunks (:func:`~.gradcam.compute_masks`), plus the
   mean pixel of the trusted labeled set (p_mean of Eq. 24);
3. ``ssl/``: the row's algorithm, made a purified subclass by :func:`~.purify.purified`, trained on
   the attacked split: every sampled unlabeled image is purified (``mode``: ``oc``, ``dp`` or
   ``ocdp``) with its stored mask before its views are built. The row's CA / ASR are this model's.

``defense_info`` reports the detector against the poison mask (:func:`detection_metrics`: AUROC;
precision, recall and FPR of flagging ``score >= cut``), the AUROC of the poisons that carry the
trigger (DeNeB's weak poisons carry none), the mean score of each group, the detector's held-out
scores of clean and triggered test images, and the figure paths (``figures/``).

Options: ``mode`` (``ocdp``), ``sigma`` (100/255), ``cut`` (0.5: the score at which an image counts
as flagged), ``purify`` (``all``: every unlabeled image is purified, as in the paper; ``flagged``:
only images with ``score >= cut``, the others keep an all-zero mask; ``weighted``: every image,
with its mask multiplied by its score, reading Eq. 24's m_ij as the probability that pixel ij is
poisoned, P(image poisoned) x P(pixel | poisoned)), ``detector`` (dict: ``steps``
(default: the row's ``trainer.max_steps``), ``batch_size`` (labeled images per step, as many
unlabeled; default: the row's ``data.batch_size``), ``val_check_interval`` and any option of
:class:`PoisonDetector` / :class:`SSLModule`, e.g. ``alpha_mix``, ``l1``, ``l2``, ``lr``, ``view``),
``mask_chunk`` (images per Grad-CAM chunk), ``figures``, ``num_examples`` and ``share_detector``.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.data.artifacts import sha256_array
from lightning_ssl_backdoor.defenses.base import Defense, DefenseContext, register_defense
from lightning_ssl_backdoor.defenses.depud.detector import (
    PoisonDetector,
    SaveModelState,
    detector_scores,
    load_model_state,
)
from lightning_ssl_backdoor.defenses.depud.gradcam import compute_masks, grad_cam
from lightning_ssl_backdoor.defenses.depud.purify import MODES, load_masks, purified_class_path, save_masks
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.metrics import auroc, detection_metrics
from lightning_ssl_backdoor.spec import Spec, config_hash, key_fields
from lightning_ssl_backdoor.ssl import resolve_algorithm
from lightning_ssl_backdoor.ssl.base import SSLModule

PURIFY_SCOPES = ("all", "flagged", "weighted")
#: the row's model settings the detector inherits (architecture and augmentation, not the optimiser).
#: A row's own ``model:`` is not among them: the detector is DePuD's 2-class network (labeled vs
#: unlabeled), built from ``arch``; the row's model itself, own or named, trains the purified data.
INHERITED_MODEL_KEYS = ("arch", "model_kwargs", "channels_last", "weak_pad", "weak_flip")
DETECTOR_STAGE_KEYS = {"steps", "batch_size", "val_check_interval"}


def _options_of(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if isinstance(klass, type) and issubclass(klass, SSLModule):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self":
                    names.add(p.name)
    return names - {"num_classes", "in_channels"}


def poison_groups(split: SSLSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks over the unlabeled set: all poisons, and the poisons that carry the trigger
    (all of them, except DeNeB's weak poisons, ``kind == 0`` in the attack's arrays)."""
    n = len(split.unlabeled)
    poison = getattr(split, "unlabeled_poison_mask", None)
    poison = torch.zeros(n, dtype=torch.bool) if poison is None else poison.clone().bool()
    triggered = poison.clone()
    attack = getattr(split, "attack", None) or {}
    arrays = attack.get("arrays") or {}
    if attack.get("pool", "unlabeled") == "unlabeled" and "kind" in arrays and "position" in arrays:
        kind = torch.as_tensor(arrays["kind"]).reshape(-1)
        pos = torch.as_tensor(arrays["position"]).reshape(-1).long()
        weak = pos[(kind == 0) & (pos >= 0) & (pos < n)]
        triggered[weak] = False
    return poison, triggered


def _device(ctx: DefenseContext) -> torch.device:
    if str(ctx.trainer.accelerator) != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(float(x), 4)


@register_defense
class DePuD(Defense):
    """Poison detector -> Grad-CAM masks -> purified SSL training of the row's algorithm."""

    name = "depud"

    def __init__(
        self,
        mode: str = "ocdp",
        sigma: float = 100.0 / 255.0,
        cut: float = 0.5,
        purify: str = "all",
        detector: Optional[dict] = None,
        mask_chunk: int = 256,
        figures: bool = True,
        num_examples: int = 8,
        share_detector: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"depud mode must be one of {list(MODES)}, got {mode!r}.")
        if not isinstance(sigma, (int, float)) or sigma < 0:
            raise ConfigError(f"depud sigma must be a number >= 0 (pixel units in [0, 1]), got {sigma!r}.")
        if not isinstance(cut, (int, float)) or not 0.0 <= cut <= 1.0:
            raise ConfigError(f"depud cut must be a score in [0, 1], got {cut!r}.")
        if purify not in PURIFY_SCOPES:
            raise ConfigError(f"depud purify must be one of {list(PURIFY_SCOPES)}, got {purify!r}.")
        if not isinstance(mask_chunk, int) or mask_chunk < 1:
            raise ConfigError(f"depud mask_chunk must be a positive integer, got {mask_chunk!r}.")
        if not isinstance(num_examples, int) or num_examples < 1:
            raise ConfigError(f"depud num_examples must be a positive integer, got {num_examples!r}.")
        opts = dict(detector or {})
        allowed = _options_of(PoisonDetector) | DETECTOR_STAGE_KEYS
        bad = sorted(set(opts) - allowed)
        if bad:
            raise ConfigError(f"depud detector options {bad} are unknown; use {sorted(allowed)}.")
        for k in DETECTOR_STAGE_KEYS:
            if k in opts and (not isinstance(opts[k], int) or opts[k] < 1):
                raise ConfigError(f"depud detector.{k} must be a positive integer, got {opts[k]!r}.")
        self.mode, self.sigma, self.cut, self.purify = mode, float(sigma), float(cut), purify
        self.detector_options = opts
        self.mask_chunk, self.figures, self.num_examples = mask_chunk, bool(figures), num_examples
        self.share_detector = bool(share_detector)

    # ------------------------------------------------------------------ stages
    def detector_context(self, ctx: DefenseContext) -> DefenseContext:
        """The context whose ``stage_dir`` holds stages 1 and 2 (see the module docstring)."""
        if not self.share_detector:
            return ctx

        model_args = {k: v for k, v in sorted(ctx.model_args.items()) if k in INHERITED_MODEL_KEYS}
        key = config_hash(
            "depud-detector", sha256_array(ctx.split.labeled.images.numpy()),
            sha256_array(ctx.split.unlabeled.images.numpy()), self.detector_options, model_args,
            asdict(ctx.data), key_fields(ctx.trainer), ctx.seed, self.purify, self.cut,
        )
        return replace(ctx, stage_dir=ctx.stage_dir.parent / f"depud-{key}")

    def train_detector(self, ctx: DefenseContext) -> tuple[dict[str, Any], torch.nn.Module]:
        """Stage 1 (cached in ``ctx.stage_dir / "detector"``): fit the detector; return its result
        and the trained Classifier."""
        opts = dict(self.detector_options)
        steps = int(opts.pop("steps", ctx.trainer.max_steps))
        bs = int(opts.pop("batch_size", ctx.data.batch_size))
        val_every = int(opts.pop("val_check_interval", min(ctx.trainer.val_check_interval, steps)))
        model_args = {k: v for k, v in ctx.model_args.items() if k in INHERITED_MODEL_KEYS}
        workdir = ctx.stage_dir / "detector"
        res = ctx.train(
            ctx.split,
            name="detector",
            algorithm=Spec(f"{PoisonDetector.__module__}.{PoisonDetector.__qualname__}", opts),
            model_args=model_args,
            trainer=ctx.with_trainer(max_steps=steps, val_check_interval=val_every,
                                     checkpoint_every_n_steps=min(ctx.trainer.checkpoint_every_n_steps, steps)),
            data=replace(ctx.data, batch_size=bs, mu=1),
            extra_callbacks=[SaveModelState(workdir / "model.pt")],
        )
        model = PoisonDetector(in_channels=int(ctx.split.test.images.shape[1]), **{**model_args, **opts}).model
        load_model_state(model, workdir / "model.pt")
        return res, model.eval()

    def make_masks(self, ctx: DefenseContext, model: torch.nn.Module) -> Path:
        """Stage 2 (cached): scores and Grad-CAM masks of the unlabeled set in ``masks.npz``."""
        path = ctx.stage_dir / "masks.npz"
        if path.is_file() and path.with_suffix(".json").is_file():
            return path
        split = ctx.split
        masks, scores = compute_masks(model, split.unlabeled.images, 1, self.mask_chunk, _device(ctx))
        if self.purify == "flagged":
            masks = masks * (scores >= self.cut).to(torch.uint8)[:, None, None]
        elif self.purify == "weighted":  # P(pixel poisoned) = P(image poisoned) * P(pixel | poisoned)
            masks = (masks.float() * scores.float()[:, None, None]).round().clamp(0, 255).to(torch.uint8)
        mean = split.labeled.images.float().div(255.0).mean(dim=(0, 2, 3))
        save_masks(path, masks, mean, split.unlabeled.images, scores=scores,
                   meta={"purify": self.purify, "cut": self.cut, "mean_source": "labeled set"})
        return path

    # --------------------------------------------------------------------- run
    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        split = ctx.split
        base_cls = resolve_algorithm(ctx.algorithm.name)
        algo_path = purified_class_path(base_cls)  # fails early on a non-SSLModule algorithm
        dctx = self.detector_context(ctx)
        det_res, model = self.train_detector(dctx)
        masks_path = self.make_masks(dctx, model)
        arrays, _ = load_masks(masks_path)
        scores = arrays["scores"]
        info = self.detection_info(split, scores, model, ctx)
        info["detector"] = {"steps": det_res["steps"], "fit_seconds": round(det_res["fit_seconds"], 1),
                            "heldout_test": {k: _r(v) for k, v in det_res["test"].items()},
                            "folder": str(dctx.stage_dir / "detector")}
        info.update(mode=self.mode, sigma=self.sigma, purify=self.purify, cut=self.cut,
                    masks=str(masks_path), purified_algorithm=algo_path,
                    mean_mask=_r(arrays["masks"].float().mean() / 255.0))
        if self.figures:
            info["figures"] = self.write_figures(ctx, split, scores, model)
        init_args = {**ctx.algorithm.init_args, "purify_mode": self.mode, "sigma": self.sigma,
                     "masks_path": str(Path(masks_path).resolve())}
        res = dict(ctx.train(split, name="ssl", algorithm=Spec(algo_path, init_args)))
        res["defense_info"] = {**ctx.info, **info}
        return res

    # ----------------------------------------------------------------- reports
    def detection_info(self, split: SSLSplit, scores: torch.Tensor, model: torch.nn.Module,
                       ctx: DefenseContext) -> dict[str, Any]:
        poison, triggered = poison_groups(split)
        keep = scores < self.cut
        det = detection_metrics(scores, poison, keep)
        weak = poison & ~triggered
        sel = ~weak
        info: dict[str, Any] = {k: (_r(v) if isinstance(v, float) else v) for k, v in det.items()}
        info["auroc_triggered"] = _r(auroc(scores[sel], triggered[sel])) if triggered.any() else None
        info["recall_triggered"] = _r((~keep & triggered).sum() / triggered.sum()) if triggered.any() else None
        labeled = detector_scores(model, split.labeled.images, device=_device(ctx))
        info["mean_score"] = {
            "labeled": _r(labeled.mean()) if len(labeled) else None,
            "clean_unlabeled": _r(scores[~poison].mean()) if (~poison).any() else None,
            "triggered_poisons": _r(scores[triggered].mean()) if triggered.any() else None,
            "untriggered_poisons": _r(scores[weak].mean()) if weak.any() else None,
        }
        return info

    def write_figures(self, ctx: DefenseContext, split: SSLSplit, scores: torch.Tensor,
                      model: torch.nn.Module) -> dict[str, str]:
        # lazy: the figures import matplotlib (heavy), needed only when figures are written
        from lightning_ssl_backdoor.defenses.depud.figures import gradcam_overlays, score_histograms

        poison, triggered = poison_groups(split)
        folder = ctx.stage_dir / "figures"
        device = _device(ctx)
        labeled = detector_scores(model, split.labeled.images, device=device)
        groups = {"labeled (trusted)": labeled, "clean unlabeled": scores[~poison],
                  "poisoned, triggered": scores[triggered], "poisoned, no trigger": scores[poison & ~triggered]}
        out = {"scores": str(score_histograms(groups, folder / "depud_scores.png"))}
        g = torch.Generator().manual_seed(int(ctx.seed))
        clean_idx = torch.nonzero(~poison).flatten()
        clean_idx = clean_idx[torch.randperm(len(clean_idx), generator=g)[: self.num_examples]]
        pois_idx = torch.nonzero(triggered).flatten()[: self.num_examples]
        if len(clean_idx) and len(pois_idx):
            def cams(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                x = split.unlabeled.images[idx].float().div(255.0)
                m, p = grad_cam(model.to(device), x.to(device), 1)
                return x, m.cpu(), p[:, 1].cpu()

            xc, mc, sc = cams(clean_idx)
            xp, mp, sp = cams(pois_idx)
            out["gradcam"] = str(gradcam_overlays(xc, mc, xp, mp, folder / "depud_gradcam.png", sc, sp))
        return out
