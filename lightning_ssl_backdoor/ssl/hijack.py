"""Hijack diagnostics: does the victim hand the triggered poisons the target pseudo-label?

A poisoning attack on the unlabeled set of a pseudo-labelling learner works in two steps (Yan et
al. 2021, Sec. V): the triggered poisons must be *hijacked* (their weak view pseudo-labelled as the
target t with confidence above the mask threshold tau), and training on the hijacked poisons must
*transfer* the trigger. When an attack fails, these numbers say which step failed.

:class:`HijackDiagnostics` (mixed into :class:`~lightning_ssl_backdoor.ssl.base.SSLModule`) keeps
the triggered poisons of the unlabeled set (:meth:`PoisonedSplit.triggered_poison_mask`) and
measures, on all of them at once through one seeded weak view, with the model in eval mode,

    hijack = (1 / |P_trig|) * sum_{u in P_trig} 1[argmax f(weak(u)) = t  and  max softmax f(weak(u)) >= tau]

at step 0 (before the first update: the warm-start theta_0 or the random initialisation) and at
every validation. They are logged as ``backdoor/hijack_step0`` and ``backdoor/hijack``, so they
reach the runner's history, ``results.json``, ``results.md`` and the curves figure. ``tau`` is the
algorithm's ``threshold`` (0.95 where it has none). The step-0 value is saved in checkpoints, so a
resumed run reports the value of its true start.

Under DDP each rank scores its own shard (chunks ``i`` with ``i mod world == rank``) and the hit
counts are summed over the ranks (one ``all_reduce``); every rank still draws every chunk's weak
view from the seeded generator, so the share equals the single-process one exactly.
"""

from __future__ import annotations

from typing import Optional

import torch


class HijackDiagnostics:
    """Mixin for SSL LightningModules (needs ``self.model``, ``self.weak``, ``self.target``)."""

    hijack_chunk = 512

    def _setup_hijack(self, dm) -> None:
        self._hijack_images: Optional[torch.Tensor] = None
        split = getattr(dm, "split", None)
        if split is None or getattr(split, "target", None) is None or not hasattr(split, "triggered_poison_mask"):
            return
        if (split.attack or {}).get("pool") == "labeled":
            return
        mask = split.triggered_poison_mask()
        if mask.numel() and bool(mask.any()):
            self._hijack_images = split.unlabeled.images[mask]
            self._trigger_mask = mask.clone()

    @property
    def hijack_threshold(self) -> float:
        return float(getattr(self.hparams, "threshold", 0.95))

    @torch.no_grad()
    def hijack_share(self) -> Optional[float]:
        """The share defined in the module docstring, for the current raw model; None without poisons."""
        images = getattr(self, "_hijack_images", None)
        if images is None or self.target is None:
            return None
        was_training = self.model.training
        self.model.eval()
        from lightning_ssl_backdoor.augment.seeding import distributed_rank

        rank, world = distributed_rank()
        g = torch.Generator().manual_seed(1_234_567)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        try:
            for i, start in enumerate(range(0, len(images), self.hijack_chunk)):
                x = images[start:start + self.hijack_chunk].float().div(255.0)
                params = self.weak.sample_params(len(x), generator=g)  # every rank draws every chunk
                if i % world != rank:
                    continue
                x = self.weak.apply_params(x, params).to(self.device)
                prob = torch.softmax(self.model(self._fmt(x)).float(), dim=1)
                conf, pred = prob.max(dim=1)
                hits += ((pred == self.target) & (conf >= self.hijack_threshold)).sum()
        finally:
            self.model.train(was_training)
        if world > 1:
            torch.distributed.all_reduce(hits)
        return int(hits) / len(images)

    def _hijack_on_train_start(self) -> None:
        if getattr(self, "_hijack_step0", None) is None and self.global_step == 0:
            self._hijack_step0 = self.hijack_share()

    def _log_hijack(self) -> None:
        share = self.hijack_share()
        if share is None:
            return
        self.log("backdoor/hijack", share, sync_dist=False, rank_zero_only=False)
        step0 = getattr(self, "_hijack_step0", None)
        if step0 is not None:
            self.log("backdoor/hijack_step0", step0, sync_dist=False, rank_zero_only=False)
