"""`SSLModule`: the Lightning base every SSL algorithm builds on.

The base owns what all algorithms share: the model (built by name, or your own ``nn.Module``;
normalisation inside), device-side augmentation in ``on_after_batch_transfer``, SGD with momentum /
Nesterov and weight decay that skips BatchNorm and bias parameters, FixMatch's cosine schedule over
``max_steps``, optional EMA weights, and evaluation of raw and EMA weights (clean accuracy, ASR and
ASR conditioned on a correct clean prediction, Yan et al. Eq. 6) through torchmetrics, so it is
exact under DDP.

An algorithm subclass defines ``unlabeled_views`` (which augmented views of the unlabeled batch it
needs) and :meth:`compute_losses`, and validates its own config in ``__init__``.

Batch layout
------------
The modules read dict batches of **uint8** images (augmentation happens on the device, after the
transfer); :class:`~lightning_ssl_backdoor.data.SSLDataModule` yields exactly these
(:mod:`lightning_ssl_backdoor.data.streams`):

- training: ``{"labeled": {"x", "y", "idx"}, "unlabeled": {"x", "idx"}}`` with
  ``labeled.x`` uint8 ``[B, C, H, W]``, ``labeled.y`` int64 ``[B]`` (class indices),
  ``labeled.idx`` int64 ``[B]`` (positions in the labeled set), ``unlabeled.x`` uint8
  ``[mu B, C, H, W]`` and ``unlabeled.idx`` int64 ``[mu B]`` (positions in the unlabeled set, which
  the backdoor statistics look up in the poison mask). ``"unlabeled"`` may be absent (``mu = 0``,
  supervised training).
- evaluation (validation / test): ``{"x", "y", "idx"}`` with the same dtypes, plus optionally
  ``"x_trig"`` uint8 ``[B, C, H, W]``, the triggered copy of each image (for ASR); ``idx`` (positions
  in the test set) is read only to find a targeted attack's image.

A batch of any other form (e.g. ``(x, y)`` tuples from a plain ``TensorDataset``) is refused with a
:class:`~lightning_ssl_backdoor.errors.DataFormatError` before it reaches the device
(:func:`check_batch_layout`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor._lightning import pl
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.interface import resolve_model
from lightning_ssl_backdoor.models.weights import load_initial_weights
from lightning_ssl_backdoor.signatures import publish_signature
from lightning_ssl_backdoor.ssl.batch import BATCH_LAYOUT, check_batch_layout
from lightning_ssl_backdoor.ssl.evaluation import BackdoorEvaluation
from lightning_ssl_backdoor.ssl.hijack import HijackDiagnostics
from lightning_ssl_backdoor.ssl.optimization import SGDCosine

__all__ = ["BATCH_LAYOUT", "SSLModule", "check_batch_layout", "load_initial_weights"]

class SSLModule(HijackDiagnostics, BackdoorEvaluation, SGDCosine, pl.LightningModule):
    """Base class. Args are shared by every algorithm.

    Args:
        arch: backbone name for :func:`lightning_ssl_backdoor.models.build_model` (unused when
            ``model`` is given).
        num_classes, in_channels: linked from the data module by the CLI.
        model_kwargs: extra keyword arguments for the model builder (widths, mean/std, ...).
        lr, momentum, nesterov, weight_decay: SGD settings (FixMatch: 0.03, 0.9, True, 5e-4).
        schedule: ``"cosine"`` (lr * cos(7 pi k / 16 K), Sohn et al. 2020) or ``"constant"``.
        warmup_steps: linear warm-up of the learning rate.
        ema_decay: EMA of the weights (0.999 in FixMatch); ``None`` disables it.
        lambda_u: weight of the unlabeled loss.
        weak_pad: padding of the weak augmentation's random crop (4 on 32x32; scaled by the caller).
        weak_flip: random horizontal flips in the weak view (FixMatch turns them off for digits/SVHN,
            whose labels a mirror image does not keep).
        strong_n, strong_m: RandAugment ops per image and maximal magnitude.
        channels_last: run the model in channels-last memory format.
        init_weights: start from these weights instead of a random initialisation: a surrogate
            written by :func:`~lightning_ssl_backdoor.attacks.surrogate.save_surrogate`
            (safetensors; Yan et al.'s victim starts from the attacker's theta_0) or a torch state
            dict of the backbone, loaded with ``weights_only=True``. The EMA copy starts from them
            too. A resumed run takes its weights from the checkpoint instead.
        model: your own model instead of ``arch``: an ``nn.Module`` following the interface of
            :mod:`lightning_ssl_backdoor.models.interface` (``features(x) -> [B, D]``, a Linear
            ``head``, ``num_classes``; inputs float [0, 1], normalisation inside; see
            :func:`~lightning_ssl_backdoor.models.wrap_backbone`), used as is (not copied), or a
            ``{"class_path": ..., "init_args": ...}`` mapping that builds one (the form to use in
            YAML and in the experiment runner). A mapping is saved with the hyperparameters, so
            ``load_from_checkpoint(path)`` rebuilds it; an instance is not (its weights are in the
            state dict): pass it again, ``load_from_checkpoint(path, model=MyNet())``.
        compile_augment: compile the device augmentation (weak crop, RandAugment + Cutout) with
            ``torch.compile(fullgraph=True)``: one graph per batch shape, no host synchronisation
            (``true``: the inductor backend; a string: that backend). The draws stay eager, so a
            seed gives the same draws as without it.
        scale_lr_with_world_size: the linear scaling rule (Goyal et al. 2017): under DDP the global
            batch is the per-rank batch times the world size, and with this flag the learning rate
            is ``lr`` times the world size (off: ``lr`` as given; see docs/scaling.md).
    """

    #: augmented views of the unlabeled batch the algorithm needs: "weak", "strong", "weak2", ...
    unlabeled_views: Sequence[str] = ()
    #: whether the algorithm uses the unlabeled batch at all
    uses_unlabeled: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a subclass declares its own options and forwards the rest (``**kwargs``) to this base:
        # its ``cls.__signature__`` lists them all (inspect, IDEs, --help, the config parsers)
        super().__init_subclass__(**kwargs)
        publish_signature(cls)

    def __init__(
        self,
        arch: str = "wrn28_2",
        num_classes: int = 10,
        in_channels: int = 3,
        model_kwargs: Optional[dict] = None,
        lr: float = 0.03,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        ema_decay: Optional[float] = 0.999,
        lambda_u: float = 1.0,
        weak_pad: int = 4,
        weak_flip: bool = True,
        strong_n: int = 2,
        strong_m: int = 10,
        channels_last: bool = False,
        init_weights: Optional[str] = None,
        model: Union[Dict[str, Any], nn.Module, None] = None,
        compile_augment: Union[bool, str] = False,
        scale_lr_with_world_size: bool = False,
    ) -> None:
        super().__init__()
        # an instance is not a hyperparameter (see save_hyperparameters); a class_path mapping is
        self._model_instance: Optional[str] = (
            f"{type(model).__module__}.{type(model).__qualname__}" if isinstance(model, nn.Module) else None
        )
        if schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be 'cosine' or 'constant', got {schedule!r}.")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1) or null, got {ema_decay}.")
        if lr <= 0:
            raise ConfigError(f"lr must be positive, got {lr}.")
        self.save_hyperparameters()
        from lightning_ssl_backdoor.augment import StrongAugment, WeakAugment

        self.model = resolve_model(model, arch, num_classes, in_channels, model_kwargs)
        if init_weights:
            load_initial_weights(self.model, init_weights)
        self.ema_model: Optional[nn.Module] = None
        if ema_decay is not None:
            self.ema_model = copy.deepcopy(self.model)
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
        self.weak = WeakAugment(flip=weak_flip, pad=weak_pad)
        self.strong = StrongAugment(n=strong_n, m=strong_m)
        if compile_augment:
            backend = "inductor" if compile_augment is True else str(compile_augment)
            self.weak.compile_apply(backend)
            self.strong.compile_apply(backend)
        #: this rank's augmentation generator under DDP (seeded from (seed, rank, step)); None: global RNG
        self._augment_rng: Optional[torch.Generator] = None
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            if self.ema_model is not None:
                self.ema_model = self.ema_model.to(memory_format=torch.channels_last)
        self.target: Optional[int] = None
        #: test index of a targeted attack's image x* (Carlini 2021): success = x* predicted as target
        self.target_image: Optional[int] = None
        self.has_trigger = False
        self._eval_metrics: Optional[nn.ModuleDict] = None
        #: the last step's values shown in the progress bar (detached tensors, read when it redraws)
        self.bar_values: dict[str, Any] = {}
        self.register_buffer("_poison_mask", torch.zeros(0, dtype=torch.bool), persistent=False)
        # [poisoned seen, poisoned -> target, poisoned masked in, clean seen, clean -> target, clean masked in]
        self.register_buffer("_bd_counts", torch.zeros(6, dtype=torch.float64), persistent=False)

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's, except that a model *instance* given as ``model`` is stored as the string
        ``"instance of <class>"`` (its weights are in the state dict; Lightning would otherwise
        pickle the module into the checkpoint's hyperparameters). A class_path mapping is kept."""
        if frame is None:
            frame = inspect.currentframe().f_back  # the caller's __init__, as Lightning would take
        instance = getattr(self, "_model_instance", None)
        if instance is not None:
            ignore = ([ignore] if isinstance(ignore, str) else list(ignore or [])) + ["model"]
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        if instance is not None and not args:
            marker = f"instance of {instance}"
            self._hparams["model"] = marker
            self._hparams_initial["model"] = marker

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._fmt(x))

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def forward_cat(self, *xs: torch.Tensor, model: Optional[nn.Module] = None) -> list[torch.Tensor]:
        """One forward pass over the concatenation of ``xs`` (FixMatch's single pass), split back."""
        model = self.model if model is None else model
        logits = model(self._fmt(torch.cat(xs)))
        return list(torch.split(logits, [len(x) for x in xs]))

    # ------------------------------------------------------- augmentation
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Refuse, in one sentence, a batch that is not in the layout of the module docstring (a
        module that names its own ``datamodule_class``, such as DBD's fine-tuning, reads that data
        module's layout instead and checks it itself)."""
        if getattr(self, "datamodule_class", None) is None:
            check_batch_layout(batch)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 -> float [0, 1]; build the augmented views the algorithm asked for (training only)."""
        if "labeled" not in batch:  # evaluation batch
            out = dict(batch)
            out["x"] = batch["x"].float().div_(255.0)
            if "x_trig" in batch:
                out["x_trig"] = batch["x_trig"].float().div_(255.0)
            return out
        self._restore_rng_if_resumed()
        lab = batch["labeled"]
        x_l = lab["x"].float().div_(255.0)
        gen = self.augment_generator(x_l.device)
        out = {"labeled": {"x": x_l, "weak": self.weak(x_l, generator=gen), "y": lab["y"], "idx": lab["idx"]}}
        if "unlabeled" in batch and self.uses_unlabeled:
            unl = batch["unlabeled"]
            x_u = unl["x"].float().div_(255.0)
            views = {"x": x_u, "idx": unl["idx"]}
            for v in self.unlabeled_views:
                views[v] = self.make_view(v, x_u, generator=gen)
            out["unlabeled"] = views
        return out

    def augment_generator(self, device: torch.device) -> Optional[torch.Generator]:
        """Under a process group of several ranks, this rank's own generator, seeded from
        ``(torch.initial_seed(), rank, global_step)`` (:mod:`lightning_ssl_backdoor.augment.seeding`):
        ranks draw different augmentations, each reproducibly. A single process: None (global RNG)."""
        from lightning_ssl_backdoor.augment.seeding import distributed_rank, rank_generator

        rank, world = distributed_rank()
        if world <= 1:
            return None
        g = self._augment_rng
        if g is None or torch.device(g.device).type != torch.device(device).type:
            step = int(self.global_step) if self._trainer is not None else 0
            g = self._augment_rng = rank_generator(torch.initial_seed(), rank, device, step)
        return g

    def make_view(self, name: str, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``weak*`` -> flip + crop; ``strong*`` -> weak then per-sample RandAugment + Cutout."""
        if name.startswith("weak"):
            return self.weak(x, generator=generator)
        if name.startswith("strong"):
            return self.strong(self.weak(x, generator=generator), generator=generator)
        if name == "raw":
            return x
        raise ConfigError(f"unknown view {name!r}; use names starting with 'weak' or 'strong'.")

    # ------------------------------------------------------------ training
    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        """Return ``{"loss": total, ...}``; optional ``u_pseudo`` / ``u_mask`` for backdoor stats."""
        raise NotImplementedError

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    # ------------------------------------------- helpers shared by algorithms
    RAMP_SHAPES = ("linear", "sigmoid")

    @staticmethod
    def check_ramp(ratio: float, shape: str) -> None:
        """Config check of a ramp-up: ``ratio`` of ``max_steps`` in [0, 1], a known ``shape``."""
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"rampup_ratio must be in [0, 1] (a fraction of max_steps), got {ratio}.")
        if shape not in SSLModule.RAMP_SHAPES:
            raise ConfigError(f"rampup_shape must be one of {list(SSLModule.RAMP_SHAPES)}, got {shape!r}.")

    def ramp(self, ratio: float, shape: str = "linear") -> float:
        """Ramp-up factor in [0, 1] at ``global_step`` over the first ``ratio * max_steps`` steps:
        ``linear_rampup`` or ``sigmoid_rampup`` (exp(-5 (1 - t)^2), Laine & Aila 2017) of
        :mod:`lightning_ssl_backdoor.losses`; 1.0 when ``ratio`` is 0."""
        from lightning_ssl_backdoor.losses import linear_rampup, sigmoid_rampup

        length = ratio * self.total_steps()
        fn = sigmoid_rampup if shape == "sigmoid" else linear_rampup
        return fn(self.global_step, length)

    @staticmethod
    @contextlib.contextmanager
    def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
        """Forward passes inside this block leave every BatchNorm's running mean / var / count as
        they were (VAT's adversarial passes, label guessing in MixMatch). In train mode they still
        normalise with batch statistics; in eval mode with the running ones. Done by switching
        ``track_running_stats`` off for the block (nothing is written, so autograd is unaffected)."""
        bns = [
            m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        for m in bns:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in bns:
                m.track_running_stats = True

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.compute_losses(batch["labeled"], batch.get("unlabeled"))
        bs = len(batch["labeled"]["y"])
        for k, v in out.items():
            if k in ("u_pseudo", "u_mask") or not torch.is_tensor(v) and not isinstance(v, float):
                continue
            if torch.is_tensor(v) and v.numel() != 1:
                continue
            value = v.detach() if torch.is_tensor(v) else v
            shown = k in ("loss", "mask_rate")
            self.log(f"train/{k}", value, batch_size=bs, prog_bar=shown and self._lightning_bar_shows_values())
            if shown:
                self.bar_values[f"train/{k}"] = value
        self._log_backdoor_stats(out, batch.get("unlabeled"))
        return out["loss"]

    def _lightning_bar_shows_values(self) -> bool:
        """Whether to hand the bar's values to Lightning's progress bar (``prog_bar=True``), which
        turns them into Python numbers after every step: a host-device synchronisation per step on a
        GPU. Not when there is no bar, nor when the bar reads :attr:`bar_values` itself when it
        redraws (``reads_module_values``, the bar of ``ssl-backdoor experiment``)."""
        bar = self._trainer.progress_bar_callback if self._trainer is not None else None
        return bar is not None and not getattr(bar, "reads_module_values", False)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then update the EMA weights (before any checkpoint of this step is written)."""
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """theta_ema <- d * theta_ema + (1 - d) * theta; buffers (BN statistics) copied."""
        if self.ema_model is None:
            return
        d = self.ema_decay_now()
        ema = list(self.ema_model.parameters())  # one fused (foreach) kernel per op, not one per tensor
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, [p.detach() for p in self.model.parameters()], alpha=1.0 - d)
        buffers = list(self.ema_model.buffers())
        if buffers:  # one foreach call, not a copy per buffer (77 in WRN-28-2)
            torch._foreach_copy_(buffers, list(self.model.buffers()))

    def ema_decay_now(self) -> float:
        """The EMA decay used by :meth:`update_ema` at this step (``ema_decay``; a hook for
        algorithms with a schedule, such as Mean Teacher's warm-up)."""
        return float(self.hparams.ema_decay)

    def configure_callbacks(self) -> list:
        """A NaN or infinite training loss stops the fit with one sentence (ssl/divergence.py)."""
        from lightning_ssl_backdoor.ssl.divergence import DivergenceGuard

        trainer = self._trainer  # a later fit / test on the same Trainer: the guard is attached already
        if trainer is not None and any(isinstance(c, DivergenceGuard) for c in trainer.callbacks):
            return []
        return [DivergenceGuard()]

    # ------------------------------------------------- checkpoint RNG state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_cpu"] = torch.get_rng_state()
        checkpoint["hijack_step0"] = getattr(self, "_hijack_step0", None)
        if torch.cuda.is_available():
            checkpoint["rng_cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_rng = (checkpoint.get("rng_cpu"), checkpoint.get("rng_cuda"))
        self._hijack_step0 = checkpoint.get("hijack_step0")

    def _restore_rng_if_resumed(self) -> None:
        """After a resume, restore the RNG state saved with the checkpoint right before the first
        training batch is augmented, so augmentation continues exactly where the run stopped."""
        rng = getattr(self, "_restored_rng", None)
        if rng is None:
            return
        if rng[0] is not None:
            torch.set_rng_state(rng[0].cpu())
        if rng[1] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng[1])
        self._restored_rng = None
