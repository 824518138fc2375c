"""What did the victim learn: the trigger, DeNeB's perturbation, or both? (issue 36)

DeNeB (Yan et al., TIFS 2021; paper 000) poisons with a triggered image plus an adversarial
perturbation (Alg. 1, Eq. 16; the strong poison of Eq. 18 is ``u^delta + (1 - w) P(u^delta)``).
Its backdoor needs the victim to associate the *trigger* with the target; the victim may instead
learn (or simply keep responding to) the perturbation. This probe separates the two at every
evaluation, on a fixed set of non-target test images x with their labels y (the
:class:`ProbeSet`), through three views:

- ``trigger``: x^delta, the trigger pasted on x (the test ASR's view);
- ``perturbation``: x + P(x), Alg. 1 run on the clean test image, no trigger;
- ``both``: x^delta + P(x^delta), Alg. 1 run on the triggered test image (a strong poison's
  construction, with the full P: w = 0).

P is computed by the attacker's theta_0, exactly as for the poisons (see
:mod:`lightning_ssl_backdoor.pipeline.probe_stage`). For each view v the probe reports the
conditioned ASR of Yan et al. Eq. 6,

    ASR_cond(v) = |{i : f(x_i) = y_i  and  f(v(x_i)) = t}| / |{i : f(x_i) = y_i}|,

over the probe's images (all with y_i != t), and the mean cross-entropy of the triggered poisons'
strong views under the target label t (what FixMatch's unsupervised loss pays on a hijacked
poison, Sohn et al. 2020 Eq. 4 with the pseudo-label t),

    L_strong = (1 / (K |P|)) sum_{u in P} sum_{k=1..K} CE(f(strong_k(weak_k(u))), t),

with K seeded views per poison, the same views at every evaluation. Both are measured for the raw
and (where kept) EMA weights in eval mode and logged as ``val/probe_<name>[_ema]`` (so they reach
the row's history, ``results.json`` and TensorBoard); the values for theta_0 at step 0 are logged
beside them as ``val/probe_<name>_step0`` and kept in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor._lightning import Callback
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.metrics import _asr_counts

VIEWS = ("trigger", "perturbation", "both")


@dataclass
class ProbeSet:
    """uint8 ``[N, C, H, W]`` non-target test images, their labels, and one uint8 copy per view."""

    clean: torch.Tensor
    labels: torch.Tensor
    views: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        n = len(self.clean)
        if len(self.labels) != n or any(v.shape != self.clean.shape for v in self.views.values()):
            raise ConfigError("ProbeSet: labels and every view need one entry per clean image, of its shape.")


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, fmt: Callable, device, chunk: int) -> torch.Tensor:
    out = [model(fmt(images[i:i + chunk].to(device).float().div(255.0))).argmax(1).cpu()
           for i in range(0, len(images), chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def conditioned_asrs(model: nn.Module, probe: ProbeSet, target: int, fmt: Callable = lambda x: x,
                     device: Any = "cpu", chunk: int = 512) -> dict[str, float]:
    """``asr_cond_<view>`` for every view (Eq. 6 over the probe's images) and ``eligible``, the
    number of probe images whose clean prediction is correct (the denominator)."""
    labels = probe.labels.long()
    clean = _predict(model, probe.clean, fmt, device, chunk)
    out: dict[str, float] = {}
    total = torch.tensor(0)
    for name, images in probe.views.items():
        hits, total = _asr_counts(_predict(model, images, fmt, device, chunk), labels, int(target), clean)
        out[f"asr_cond_{name}"] = float(hits) / max(1, int(total))
    out["eligible"] = float(total)
    return out


@torch.no_grad()
def strong_view_target_loss(model: nn.Module, images: torch.Tensor, target: int, weak: Callable,
                            strong: Callable, views: int = 4, seed: int = 1_234_567,
                            fmt: Callable = lambda x: x, device: Any = "cpu", chunk: int = 512) -> float:
    """L_strong of the module docstring for uint8 ``images`` (the triggered poisons)."""
    g = torch.Generator().manual_seed(int(seed))
    total, count = 0.0, 0
    for _ in range(int(views)):
        for i in range(0, len(images), chunk):
            x = images[i:i + chunk].float().div(255.0)
            x = strong(weak(x, generator=g), generator=g).to(device)
            logits = model(fmt(x)).float()
            tgt = torch.full((len(x),), int(target), dtype=torch.long, device=logits.device)
            total += float(F.cross_entropy(logits, tgt, reduction="sum"))
            count += len(x)
    return total / max(1, count)


class LearnedFeatureProbe(Callback):
    """Logs the probe of the module docstring at every validation (opt-in: the experiment's
    ``probe`` setting adds it). Reads the module's ``eval_models()``, ``target``, ``weak``,
    ``strong``, ``_fmt`` and the triggered poisons ``_hijack_images`` (absent on a no-attack row:
    no loss is logged then)."""

    def __init__(self, probe: ProbeSet, target: int, views: int = 4) -> None:
        self.probe, self.target, self.views = probe, int(target), int(views)
        self.step0: Optional[dict[str, float]] = None

    def measure(self, pl_module, model: nn.Module) -> dict[str, float]:
        was = model.training
        model.eval()
        try:
            out = conditioned_asrs(model, self.probe, self.target, pl_module._fmt, pl_module.device)
            poisons = getattr(pl_module, "_hijack_images", None)
            if poisons is not None and len(poisons):
                out["strong_target_loss"] = strong_view_target_loss(
                    model, poisons, self.target, pl_module.weak, pl_module.strong, self.views,
                    fmt=pl_module._fmt, device=pl_module.device)
        finally:
            model.train(was)
        return out

    def on_train_start(self, trainer, pl_module) -> None:
        if self.step0 is None and trainer.global_step == 0:
            self.step0 = self.measure(pl_module, pl_module.model)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for name in pl_module.eval_models():
            suffix = "" if name == "raw" else "_" + name
            for key, value in self.measure(pl_module, pl_module._model_by_name(name)).items():
                pl_module.log(f"val/probe_{key}{suffix}", value, sync_dist=False, rank_zero_only=False)
        for key, value in (self.step0 or {}).items():
            pl_module.log(f"val/probe_{key}_step0", value, sync_dist=False, rank_zero_only=False)

    def state_dict(self) -> dict[str, Any]:
        return {"step0": self.step0}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step0 = state_dict.get("step0")
