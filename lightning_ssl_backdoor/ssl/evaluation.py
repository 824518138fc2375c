"""Evaluation of an :class:`~lightning_ssl_backdoor.ssl.base.SSLModule` (a mixin of it).

Raw and EMA weights are evaluated on the clean test images (clean accuracy) and, when the data
module carries an attack, on their triggered copies: the attack success rate and the ASR
conditioned on a correct clean prediction (Yan et al. Eq. 6), or, for a targeted attack (Carlini
2021), whether the one image x* is predicted as the target. All are torchmetrics, so they are exact
under DDP. During training the share of poisoned and clean unlabeled samples pseudo-labelled as the
target and passing the confidence mask is accumulated and logged at each validation
(``backdoor/*``).

The hijack share of the triggered poisons (:mod:`.hijack`) is set up and logged from these hooks.
The mixin reads the module's ``model``, ``ema_model``, ``target``, ``target_image``,
``has_trigger``, ``_poison_mask``, ``_bd_counts`` and ``_fmt``, all set by ``SSLModule.__init__``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class BackdoorEvaluation:
    """Validation / test steps and backdoor statistics of ``SSLModule``."""

    # ---------------------------------------------------------- evaluation
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "target", None) is not None:
            self.target = int(dm.target)
            self.has_trigger = getattr(dm, "trigger", None) is not None
            mask = getattr(dm, "unlabeled_poison_mask", None)
            if mask is not None:
                self._poison_mask = mask.clone()
            info = (getattr(dm.split, "attack", None) or {}).get("info") or {}
            if info.get("target_image") is not None:
                self.target_image = int(info["target_image"])
            self._setup_hijack(dm)
        self._build_eval_metrics()

    def _build_eval_metrics(self) -> None:
        from lightning_ssl_backdoor.metrics import AttackSuccessRate, CleanAccuracy

        metrics = {}
        for model_name in self.eval_models():
            for stage in ("val", "test"):
                p = f"{stage}_{model_name}"
                metrics[f"{p}_acc"] = CleanAccuracy()
                if self.target is not None and self.has_trigger:
                    metrics[f"{p}_asr"] = AttackSuccessRate(self.target, conditioned=False)
                    metrics[f"{p}_asr_cond"] = AttackSuccessRate(self.target, conditioned=True)
                if self.target is not None and self.target_image is not None:
                    metrics[f"{p}_targeted"] = CleanAccuracy()  # 1 when x* is predicted as the target
        self._eval_metrics = nn.ModuleDict(metrics)

    def eval_models(self) -> list[str]:
        return ["raw"] + (["ema"] if self.ema_model is not None else [])

    def _model_by_name(self, name: str) -> nn.Module:
        return self.model if name == "raw" else self.ema_model  # type: ignore[return-value]

    def _eval_step(self, batch: dict, stage: str) -> None:
        assert self._eval_metrics is not None
        y = batch["y"]
        for name in self.eval_models():
            model = self._model_by_name(name)
            p = f"{stage}_{name}"
            clean = model(self._fmt(batch["x"])).argmax(1)
            self._eval_metrics[f"{p}_acc"].update(clean, y)
            if f"{p}_targeted" in self._eval_metrics:
                hit = batch["idx"] == self.target_image
                if hit.any():
                    self._eval_metrics[f"{p}_targeted"].update(clean[hit], torch.full_like(clean[hit], self.target))
            if self.target is not None and "x_trig" in batch:
                trig = model(self._fmt(batch["x_trig"])).argmax(1)
                self._eval_metrics[f"{p}_asr"].update(trig, y)
                self._eval_metrics[f"{p}_asr_cond"].update(trig, y, clean)

    def _eval_epoch_end(self, stage: str) -> None:
        assert self._eval_metrics is not None
        for key, metric in self._eval_metrics.items():
            if not key.startswith(stage + "_"):
                continue
            _, model_name, what = key.split("_", 2)
            self.log(f"{stage}/{what}" + ("" if model_name == "raw" else "_ema"), metric.compute(), sync_dist=False)
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_train_start(self) -> None:
        self._hijack_on_train_start()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")
        if self.trainer is not None and not self.trainer.sanity_checking:
            self._flush_backdoor_stats()
            self._log_hijack()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------- backdoor statistics
    def _log_backdoor_stats(self, out: dict, unlabeled: Optional[dict]) -> None:
        """Accumulate, for poisoned and clean unlabeled samples, how many were seen, pseudo-labelled
        as the target, and passed the confidence mask; logged as shares at each validation."""
        if unlabeled is None or "u_pseudo" not in out or self.target is None or self._poison_mask.numel() == 0:
            return
        poisoned = self._poison_mask[unlabeled["idx"]]
        pseudo = out["u_pseudo"]
        mask = out.get("u_mask", torch.ones_like(pseudo, dtype=torch.bool))
        is_target = pseudo == self.target
        counts = torch.stack([
            poisoned.sum(), (is_target & poisoned).sum(), (mask & poisoned).sum(),
            (~poisoned).sum(), (is_target & ~poisoned).sum(), (mask & ~poisoned).sum(),
        ]).to(self._bd_counts)
        self._bd_counts += counts

    def _flush_backdoor_stats(self) -> None:
        counts = self._bd_counts
        if self.trainer is not None and self.trainer.world_size > 1:
            counts = self.all_gather(counts).reshape(-1, 6).sum(0)
        if counts.sum() == 0:
            return
        for name, (n, tgt, msk) in (("poisoned", counts[:3]), ("clean", counts[3:])):
            if n > 0:
                self.log(f"backdoor/{name}_pseudo_target", tgt / n, sync_dist=False, rank_zero_only=False)
                self.log(f"backdoor/{name}_mask_rate", msk / n, sync_dist=False, rank_zero_only=False)
        self._bd_counts.zero_()
