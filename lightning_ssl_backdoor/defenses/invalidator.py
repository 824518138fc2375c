"""Backdoor Invalidator (BI, paper 001, "Filter, Obstruct and Dilute") as a training plug-in.

One mixin, :class:`InvalidatorMixin`, attaches BI to a host SSL algorithm without copying it:
:func:`invalidate` builds ``class Invalidated<Host>(InvalidatorMixin, Host)``. The module exports
:class:`InvalidatedFixMatch`, :class:`InvalidatedFlexMatch` and :class:`InvalidatedMixMatch`, so
class paths such as ``lightning_ssl_backdoor.defenses.invalidator.InvalidatedFixMatch`` resolve in
configs and checkpoints. The registered defense ``invalidator``
(:mod:`~lightning_ssl_backdoor.defenses.invalidator_defense`) swaps a row's algorithm for its
invalidated class with the defense's options added to the init args.

The paper's equations were lost in extraction: this follows ``papers/INDEX.md`` ("BI (001)"), i.e.
the authors' public code, with two deliberate differences (documented where they act):

1. **Filter** (``use_filter``): a Gaussian blur (:class:`~lightning_ssl_backdoor.augment.gaussian.
   GaussianFilter`, standard deviation ``filter_radius``, default 1; their code: Pillow radius
   0.75) on every image the model sees: labeled and unlabeled training images before augmentation
   (on the uint8 batch, re-quantised as Pillow does) and every clean test input. The authors paste
   the test trigger *after* the blur, so their triggered test images are never filtered:
   ``filter_triggered_test=False`` (default, the authors' deployment and BI's reported numbers)
   reproduces that order (trigger pasted on the blurred clean image; needs the attack's trigger,
   taken from the data module); ``True`` blurs the triggered test image as a model that filters
   every input would (on the digits settings this test-time blur alone removed most of the ASR,
   which is why it is not the default: it measures the filter as an input purifier, not BI).
2. **Obstruct** (``use_complementary``): during stage one (the first ``stage_one_steps``, by
   default ``stage_one_ratio`` of ``max_steps``; theirs 50k of 2M) the unlabeled loss is the
   forward-corrected complementary loss alone, on multi-hot complementary labels drawn from the
   weak view (class k marked with probability ``(1 - p_k) r``, ``r`` the alignment ratio: share of
   the batch whose weak and strong argmax agree, or, with ``alignment: mask``, share passing the
   confidence mask), with the running transition-matrix estimate of
   :mod:`~lightning_ssl_backdoor.defenses.invalidator_core`. The mask is **boolean**: their code
   masked with an integer tensor and so only used two samples per batch (the bug fixed here).
3. **Dilute** (``use_mixup``): in stage two the host's unlabeled loss is weighted ``1 - lam`` and
   ``lam * CE`` is added on labeled images mixed with confident strongly-augmented unlabeled images
   and their pseudo-labels (labeled weight >= 0.5, Beta(1, 1)); ``lam = 0.1 (1 + cos(pi it / T))``.

Weights: the host's unlabeled weight ``lambda_u`` is scaled (0 in stage one, ``1 - lam`` in stage
two); the complementary loss is added with ``complementary_weight`` and the mix-up CE with ``lam``,
neither multiplied by ``lambda_u`` (equal for FixMatch / FlexMatch, where ``lambda_u = 1``; it keeps
MixMatch's ``lambda_u = 75`` from scaling a cross-entropy). Under DDP the transition statistics are
summed over ranks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.augment.gaussian import GaussianFilter
from lightning_ssl_backdoor.defenses.invalidator_core import (
    OPTION_NAMES,
    check_options,
    complementary_labels,
    initial_transition,
    mixup_weight,
    transition_statistics,
    trigger_mixup,
    update_transition,
)
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import complementary_loss
from lightning_ssl_backdoor.ssl import FixMatch, FlexMatch, MixMatch

__all__ = [
    "INVALIDATED",
    "OPTION_NAMES",
    "InvalidatedFixMatch",
    "InvalidatedFlexMatch",
    "InvalidatedMixMatch",
    "InvalidatorMixin",
    "blur_quantised",
    "check_options",
    "invalidate",
    "invalidated_class",
]


class InvalidatorMixin:
    """BI around a host :class:`~lightning_ssl_backdoor.ssl.base.SSLModule` (see the module doc).

    Use as ``class X(InvalidatorMixin, Host)`` (or :func:`invalidate`). Options: those of
    :func:`check_options`. Overridable hooks: :meth:`view_logits` (where the weak / strong /
    labeled logits come from), :meth:`confident_mask`, :meth:`pseudo_labels`,
    :meth:`unlabeled_weight_scale` (how the host's unlabeled loss is scaled).
    """

    #: unlabeled views BI needs besides the host's own (added to the batch, not to the host's list)
    invalidator_views = ("weak", "strong")
    #: BI's options, taken out of ``**kwargs`` (listed in the host's published signature)
    signature_options = staticmethod(check_options)

    def __init__(self, **kwargs: Any) -> None:
        opts = check_options(**{k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs})
        super().__init__(**kwargs)
        self.save_hyperparameters(opts)
        c = int(self.hparams.num_classes)
        self.gaussian = GaussianFilter(opts["filter_radius"])
        self.register_buffer("bi_transition", initial_transition(c))
        self.register_buffer("bi_transition_count", torch.ones(c, dtype=torch.float64))
        self._bi_capture: Optional[list] = None
        object.__setattr__(self, "_bi_trigger", None)  # not a submodule: never in the state dict

    # ------------------------------------------------------------------ filter
    def set_test_trigger(self, trigger: Optional[torch.nn.Module]) -> None:
        """The attack's trigger, pasted on blurred clean test images when ``filter_triggered_test``
        is False (set from the data module in ``setup``)."""
        object.__setattr__(self, "_bi_trigger", trigger)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        if getattr(dm, "trigger", None) is not None:
            self.set_test_trigger(dm.trigger)

    def filter_images(self, x: torch.Tensor) -> torch.Tensor:
        """Blur float [0, 1] images and quantise to 8 bits (as the stored / Pillow images are)."""
        return blur_quantised(self.gaussian, x)

    def _filter_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The same on a raw 0-255 batch (uint8 in, uint8 out), before any augmentation."""
        return (self.filter_images(x.float() / 255.0) * 255.0).round().to(x.dtype)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        hp = self.hparams
        if hp.use_filter and "labeled" in batch:
            batch = dict(batch)
            for part in ("labeled", "unlabeled"):
                if part in batch:
                    batch[part] = {**batch[part], "x": self._filter_raw(batch[part]["x"])}
        out = super().on_after_batch_transfer(batch, dataloader_idx)
        if "unlabeled" in out and (hp.use_complementary or hp.use_mixup):
            unl = out["unlabeled"]
            for v in self.invalidator_views:
                if v not in unl:
                    unl[v] = self.make_view(v, unl["x"])
        return out

    def _eval_step(self, batch: dict, stage: str) -> None:
        if self.hparams.use_filter:
            batch = dict(batch)
            batch["x"] = self.filter_images(batch["x"])
            if "x_trig" in batch:
                if self.hparams.filter_triggered_test:
                    batch["x_trig"] = self.filter_images(batch["x_trig"])
                else:
                    batch["x_trig"] = self._paste_trigger(batch["x"])
        super()._eval_step(batch, stage)

    def _paste_trigger(self, x: torch.Tensor) -> torch.Tensor:
        trig = self._bi_trigger
        if trig is None:
            raise ConfigError(
                "filter_triggered_test=False pastes the attack's trigger after the blur, but no trigger is "
                "known: train with an attacked data module or call set_test_trigger(trigger)."
            )
        return (trig.to(x.device)(x).clamp(0.0, 1.0) * 255.0).round() / 255.0

    # ------------------------------------------------------------------- hooks
    def forward_cat(self, *xs: torch.Tensor, model: Optional[torch.nn.Module] = None) -> list[torch.Tensor]:
        """The host's single forward pass; while BI computes a loss, its inputs and logits are kept
        so :meth:`view_logits` can reuse the host's logits of the same view tensors."""
        outs = super().forward_cat(*xs, model=model)
        if self._bi_capture is not None and (model is None or model is self.model):
            self._bi_capture.extend(zip(xs, outs))
        return outs

    def _captured(self, view: torch.Tensor) -> Optional[torch.Tensor]:
        for x, logits in self._bi_capture or ():
            if x is view:
                return logits
        return None

    def view_logits(self, labeled: dict, unlabeled: dict, need: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Logits of ``need`` among "labeled" (weak labeled view), "weak" and "strong" (unlabeled).

        Reuses the host's logits of the same view tensors when its loss computed them (FixMatch and
        FlexMatch: all three; MixMatch: the weak view, from label guessing); the rest come from
        one extra forward pass (with gradient: the strong logits carry the complementary loss)."""
        tensors = {"labeled": labeled["weak"], "weak": unlabeled["weak"], "strong": unlabeled["strong"]}
        out = {k: self._captured(tensors[k]) for k in need}
        missing = [k for k in need if out[k] is None]
        if missing:
            for k, logits in zip(missing, super().forward_cat(*(tensors[k] for k in missing))):
                out[k] = logits
        return out

    def confident_mask(self, host_out: dict, probs_weak: torch.Tensor) -> torch.Tensor:
        """Which unlabeled images are confident: the host's own mask when it has one (FixMatch,
        FlexMatch), else ``max p >= confidence_threshold`` (MixMatch)."""
        if "u_mask" in host_out:
            return host_out["u_mask"].bool()
        return probs_weak.max(1).values >= float(self.hparams.confidence_threshold)

    def pseudo_labels(self, host_out: dict, probs_weak: torch.Tensor) -> torch.Tensor:
        """The host's pseudo-labels when it reports them, else the weak view's argmax."""
        return host_out["u_pseudo"] if "u_pseudo" in host_out else probs_weak.argmax(1)

    @contextlib.contextmanager
    def unlabeled_weight_scale(self, factor: float) -> Iterator[None]:
        """Scale the host's unlabeled weight ``lambda_u`` by ``factor`` for one loss computation
        (every host reads ``self.hparams.lambda_u`` inside ``compute_losses``)."""
        old = self.hparams.lambda_u
        self.hparams.lambda_u = old * factor
        try:
            yield
        finally:
            self.hparams.lambda_u = old

    # ------------------------------------------------------------------ stages
    def stage_one_length(self) -> int:
        hp = self.hparams
        if not hp.use_complementary:
            return 0
        if hp.stage_one_steps is not None:
            return int(hp.stage_one_steps)
        return int(round(hp.stage_one_ratio * self.total_steps()))

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        hp = self.hparams
        if unlabeled is None or not (hp.use_complementary or hp.use_mixup):
            return super().compute_losses(labeled, unlabeled)
        step, total = int(self.global_step), self.total_steps()
        stage_one = step < self.stage_one_length()
        lam = mixup_weight(step, total) if hp.use_mixup and not stage_one else 0.0
        need = ("labeled", "weak", "strong") if stage_one else (("weak",) if lam > 0 else ())
        self._bi_capture = []
        try:
            with self.unlabeled_weight_scale(0.0 if stage_one else 1.0 - lam):
                out = dict(super().compute_losses(labeled, unlabeled))
            logits = self.view_logits(labeled, unlabeled, need) if need else {}
        finally:
            self._bi_capture = None
        out["bi_stage"] = 1.0 if stage_one else 2.0
        out["bi_lam"] = float(lam)
        if stage_one:
            comp, info = self._complementary_loss(labeled, out, logits)
            out["loss"] = out["loss"] + float(hp.complementary_weight) * comp
            out["bi_comp_loss"] = comp.detach()
            out.update(info)
        elif lam > 0:
            mix, info = self._mixup_loss(labeled, unlabeled, out, logits["weak"])
            out["loss"] = out["loss"] + lam * mix
            out["bi_mix_loss"] = mix.detach()
            out.update(info)
        return out

    def _complementary_loss(self, labeled: dict, host_out: dict, logits: dict) -> tuple[torch.Tensor, dict]:
        hp = self.hparams
        c = int(hp.num_classes)
        p_w = logits["weak"].detach().float().softmax(1)
        pseudo = p_w.argmax(1)
        if hp.alignment == "agreement":
            ratio = float((logits["strong"].detach().argmax(1) == pseudo).float().mean())
        else:
            ratio = float(self.confident_mask(host_out, p_w).float().mean())
        marks = complementary_labels(p_w, ratio)
        self.update_transition(
            torch.cat([p_w, logits["labeled"].detach().float().softmax(1)]), torch.cat([pseudo, labeled["y"]])
        )
        loss = complementary_loss(logits["strong"], marks, self.bi_transition)
        counts = marks.sum(0).float()
        info = {"bi_alignment": ratio, "bi_comp_per_sample": counts.sum() / max(1, len(marks)),
                "bi_transition_offdiag": self._offdiag_mean().float()}
        info.update({f"bi_comp_count_c{k}": counts[k] for k in range(c)})
        if self._trainer is not None and int(self.global_step) % int(hp.log_transition_every) == 0:
            self.log_transition_matrix()
        return loss, info

    def _mixup_loss(
        self, labeled: dict, unlabeled: dict, host_out: dict, logits_w: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        p_w = logits_w.detach().float().softmax(1)
        conf = self.confident_mask(host_out, p_w)
        mixed = trigger_mixup(labeled["weak"], labeled["y"], unlabeled["strong"], self.pseudo_labels(host_out, p_w),
                              conf, int(self.hparams.num_classes), float(self.hparams.trigger_mixup_alpha))
        info = {"bi_mix_confident": conf.float().mean()}
        if mixed is None:
            return logits_w.sum() * 0.0, info
        x_mix, y_mix, m, _ = mixed
        logits = self.model(self._fmt(x_mix))
        loss = -(y_mix * F.log_softmax(logits, 1)).sum(1).mean()
        info["bi_mix_labeled_weight"] = float(m)
        return loss, info

    # --------------------------------------------------------- transition matrix
    @torch.no_grad()
    def update_transition(self, probs: torch.Tensor, assigned: torch.Tensor) -> None:
        """Add one iteration's estimate (summed over ranks under DDP) to the running average."""
        sums, counts = transition_statistics(probs, assigned, int(self.hparams.num_classes))
        if self._trainer is not None and self._trainer.world_size > 1:
            sums, counts = self.all_gather(sums).sum(0), self.all_gather(counts).sum(0)
        t, n = update_transition(self.bi_transition, self.bi_transition_count, sums, counts)
        self.bi_transition.copy_(t)
        self.bi_transition_count.copy_(n)

    def _offdiag_mean(self) -> torch.Tensor:
        c = self.bi_transition.shape[0]
        return self.bi_transition.sum() / (c * (c - 1))

    def log_transition_matrix(self) -> None:
        """The matrix as an image (values in [0, 1], one 16x16 block per entry) and as a text table,
        when the logger is TensorBoard (``add_image`` / ``add_text``); a no-op otherwise."""
        exp = getattr(self.logger, "experiment", None) if self._trainer is not None else None
        if exp is None or not hasattr(exp, "add_image") or not self.trainer.is_global_zero:
            return
        t = self.bi_transition.detach().float().clamp(0, 1).cpu()
        img = t.repeat_interleave(16, 0).repeat_interleave(16, 1).unsqueeze(0)
        step = int(self.global_step)
        exp.add_image("bi/transition_matrix", img, step, dataformats="CHW")
        if hasattr(exp, "add_text"):
            rows = ["| " + " | ".join(f"{v:.3f}" for v in r) + " |" for r in t.tolist()]
            exp.add_text("bi/transition_matrix", "\n".join(rows), step)


_INVALIDATED: dict[type, type] = {}


def invalidate(host: type) -> type:
    """``Invalidated<Host>``: the host class with BI mixed in (cached: one class per host)."""
    if host not in _INVALIDATED:
        name = f"Invalidated{host.__name__}"
        _INVALIDATED[host] = type(name, (InvalidatorMixin, host), {"__module__": __name__, "__qualname__": name})
    return _INVALIDATED[host]


InvalidatedFixMatch = invalidate(FixMatch)
InvalidatedFlexMatch = invalidate(FlexMatch)
InvalidatedMixMatch = invalidate(MixMatch)

#: the hosts the ``invalidator`` defense supports -> their module-level invalidated classes
INVALIDATED = {FixMatch: InvalidatedFixMatch, FlexMatch: InvalidatedFlexMatch, MixMatch: InvalidatedMixMatch}


def invalidated_class(host: type) -> type:
    """The exported invalidated class of ``host`` (itself if it already is one)."""
    if isinstance(host, type) and issubclass(host, InvalidatorMixin):
        return host
    if host not in INVALIDATED:
        names = ", ".join(sorted(c.__name__ for c in INVALIDATED))
        raise ConfigError(f"the invalidator defense plugs into {names}, not {getattr(host, '__name__', host)}.")
    return INVALIDATED[host]


def blur_quantised(gaussian: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BI's filter on float ``[0, 1]`` images: ``gaussian``, then re-quantised to 8 bits."""
    return (gaussian(x.float()).clamp(0.0, 1.0) * 255.0).round() / 255.0
