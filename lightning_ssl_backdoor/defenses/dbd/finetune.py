"""DBD stage 3: MixMatch fine-tuning of the whole model, re-filtering every "epoch".

:class:`DBDFineTune` starts from the stage-2 model (backbone + linear head). Its data module supplies
the ranked pool (``split.labeled``: images with their given, possibly poisoned, labels) and the
extra unlabeled images (``split.unlabeled``). At step 0 and then every ``rerank_every`` steps, ALL
pool samples are scored by the per-sample SCE loss (:func:`~.linear_head.rank_by_loss`,
unaugmented, eval mode) and the ``filter_rate`` (50%) lowest become the labeled, high-credible set;
the rest lose their labels and join the unlabeled images. The training loader
(:class:`~.draws.DBDFineTuneData`) yields each step's draw: ``B`` positions in a seeded per-epoch
permutation of the high-credible set and ``unlabeled_ratio * B`` in one of the unlabeled set
(DBD: 64 + 64), so a resumed run sees the very same batches; ``on_after_batch_transfer`` re-ranks
when an epoch starts, resolves the positions against the current split and runs MixMatch on them (K = 2, T = 0.5, mix-up alpha 0.75, lambda_u = 15 ramped linearly, Adam lr 0.002, DBD
App. B.3). The step-0 ranking is the stage-2 filtering, because the weights are still the stage-2
ones. With ``rank=False`` the whole pool is trusted (the poisoned-unlabeled threat model).

Every ranking is recorded in ``filter_history`` (saved in checkpoints): how many of the
high-credible samples are poisons (DBD Table 23), scored against the split's poison mask, which the
learner never reads otherwise, how many carry each given label (``high_per_label``), and which
given labels kept none (``labels_without_high``, warned once: the global ranking can empty a class
whose images the model confuses with another, e.g. automobile next to the target truck). The
evaluated model is the LAST one (no test-set selection).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch

from lightning_ssl_backdoor.data.split import PoisonedSplit
from lightning_ssl_backdoor.defenses.dbd.draws import DBDDrawStream, DBDFineTuneData
from lightning_ssl_backdoor.defenses.dbd.linear_head import ROBUST_LOSSES, loss_kwargs_of, lowest_fraction, rank_by_loss
from lightning_ssl_backdoor.defenses.dbd.simclr import load_classifier_state, load_into
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.ssl.mixmatch import MixMatch


class DBDFineTune(MixMatch):
    datamodule_class = DBDFineTuneData  # the runner trains it on this data module
    """MixMatch over a high-credible / low-credible partition of the pool that is re-ranked.

    Args (besides :class:`MixMatch`'s):
        init_checkpoint: the stage-2 model (a :class:`Classifier` state dict or Lightning checkpoint).
        filter_rate: fraction alpha of the pool kept labeled (0.5).
        rank: rank the pool (True) or trust all of it (False).
        rerank_every: steps between rankings (an "epoch"); ``None``: one pass over the high-credible
            set, ``ceil(alpha N / B)``; 0: rank only once, at step 0.
        unlabeled_ratio: unlabeled images per labeled one in a step (1, as DBD's 64 + 64; named
            apart from the data module's ``mu``, which the draws of DBDFineTuneData do not use).
        rank_loss: ``sce`` (``sce_alpha`` 0.1, ``sce_beta`` 1), ``gce``, ``apl`` or ``ce``.
        per_class: keep the ``filter_rate`` lowest within each given label instead of globally.
        lr, adam_weight_decay: Adam (0.002, 0). ``temperature`` 0.5, ``lambda_u`` 15, ``ema_decay`` None.
        optimizer: ``adam`` (DBD App. B.3) or ``sgd``: the zoo's SGD (``momentum``, ``nesterov``,
            ``weight_decay`` on weights only, ``schedule`` cosine by default) at ``lr``, the optimiser a
            small CNN trained from scratch gets in this project's supervised rows.
    """

    def __init__(
        self,
        *,
        init_checkpoint: Optional[str] = None,
        filter_rate: float = 0.5,
        rank: bool = True,
        rerank_every: Optional[int] = None,
        unlabeled_ratio: int = 1,
        rank_loss: str = "sce",
        sce_alpha: float = 0.1,
        sce_beta: float = 1.0,
        gce_q: float = 0.7,
        apl_alpha: float = 1.0,
        apl_beta: float = 1.0,
        rank_batch_size: int = 512,
        per_class: bool = False,
        temperature: float = 0.5,
        lambda_u: float = 15.0,
        lr: float = 0.002,
        adam_weight_decay: float = 0.0,
        optimizer: str = "adam",
        ema_decay: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}.")
        if not 0.0 < float(filter_rate) <= 1.0:
            raise ConfigError(f"filter_rate must be in (0, 1], got {filter_rate}.")
        if rerank_every is not None and int(rerank_every) < 0:
            raise ConfigError(f"rerank_every must be >= 0 steps or null, got {rerank_every}.")
        if int(unlabeled_ratio) < 1:
            raise ConfigError(f"unlabeled_ratio must be >= 1 (unlabeled per labeled image), got {unlabeled_ratio}.")
        if rank_loss not in ROBUST_LOSSES:
            raise ConfigError(f"rank_loss must be one of {list(ROBUST_LOSSES)}, got {rank_loss!r}.")
        if adam_weight_decay < 0 or rank_batch_size < 1:
            raise ConfigError("adam_weight_decay must be >= 0 and rank_batch_size >= 1.")
        super().__init__(temperature=temperature, lambda_u=lambda_u, lr=lr, ema_decay=ema_decay, **kwargs)
        self.save_hyperparameters()
        if init_checkpoint:
            load_into(self.model, load_classifier_state(init_checkpoint), "stage-2 model", init_checkpoint)
            if self.ema_model is not None:
                self.ema_model.load_state_dict(self.model.state_dict())
        self._loss_kwargs = loss_kwargs_of(rank_loss, sce_alpha, sce_beta, gce_q, apl_alpha, apl_beta)
        self._pool = None
        self._extra = None
        self._all_images: Optional[torch.Tensor] = None
        self._pool_labels: Optional[torch.Tensor] = None
        self._pool_poison = torch.zeros(0, dtype=torch.bool)
        self._sample_seed = 0
        self._high: Optional[torch.Tensor] = None
        self._ranked_at: Optional[int] = None
        self._index_sets: Optional[tuple] = None
        self._pending_log: Optional[dict] = None
        self.filter_history: list[dict[str, Any]] = []
        self._warned_empty = False

    # ---------------------------------------------------------------- data
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "split"):
            raise ConfigError("DBD fine-tuning needs an SSLDataModule: it reads the split's labeled / unlabeled sets.")
        split = dm.split
        self._pool, self._extra = split.labeled, split.unlabeled
        self._sample_seed = int(getattr(dm, "seed", 0))
        pool_mask = torch.zeros(len(self._pool), dtype=torch.bool)
        extra_mask = torch.zeros(len(self._extra), dtype=torch.bool)
        if isinstance(split, PoisonedSplit):
            pool_mask, extra_mask = split.labeled_poison_mask.clone(), split.unlabeled_poison_mask.clone()
        self._pool_poison = pool_mask
        # unlabeled indices live in one space: pool rows 0..N-1, then the extra unlabeled images
        self._poison_mask = torch.cat([pool_mask, extra_mask]).to(self.device)
        if self._high is not None and len(self._high) != len(self._pool):
            raise ConfigError("the checkpoint's high-credible mask does not match this pool; use a fresh stage folder.")

    def _epoch_steps(self, batch_size: int) -> int:
        every = self.hparams.rerank_every
        if every is not None:
            return int(every)
        n_high = max(1, int(round(float(self.hparams.filter_rate) * len(self._pool))))
        return max(1, math.ceil(n_high / batch_size))

    def rerank(self, step: int) -> dict[str, Any]:
        """Rank the whole pool with the current model; record the filtering report entry."""
        assert self._pool is not None
        n = len(self._pool)
        if self.hparams.rank:
            losses, high = rank_by_loss(
                self.model, self._pool.images, self._pool.labels, float(self.hparams.filter_rate),
                self.hparams.rank_loss, self._loss_kwargs, int(self.hparams.rank_batch_size),
                per_class=bool(self.hparams.per_class),
            )
            mean_loss: Optional[float] = float(losses.mean()) if n else None
        else:
            high, mean_loss = torch.ones(n, dtype=torch.bool), None
        self._high, self._ranked_at, self._index_sets = high, int(step), None
        entry = {
            "step": int(step),
            "num_ranked": n,
            "num_high": int(high.sum()),
            "num_poisons": int(self._pool_poison.sum()),
            "poisons_in_high": int((high & self._pool_poison).sum()),
            "high_per_label": torch.bincount(self._pool.labels[high].long(),
                                             minlength=int(self.hparams.num_classes)).tolist(),
            "mean_loss": mean_loss,
        }
        present = torch.bincount(self._pool.labels.long(), minlength=int(self.hparams.num_classes)).tolist()
        entry["labels_without_high"] = [k for k, (h, p) in enumerate(zip(entry["high_per_label"], present))
                                        if p > 0 and h == 0]
        if entry["labels_without_high"] and not self._warned_empty:
            self._warned_empty = True
            warnings.warn(f"DBD ranking at step {step} kept no image of given label(s) "
                          f"{entry['labels_without_high']} labeled: MixMatch now learns those classes from "
                          "guessed labels only (per_class=True keeps every label).", RuntimeWarning, stacklevel=2)
        self.filter_history = [h for h in self.filter_history if h["step"] != step] + [entry]
        self._pending_log = entry
        return entry

    def num_high(self) -> int:
        """Size of the high-credible set every ranking keeps (the whole pool without ranking)."""
        assert self._pool is not None
        if not self.hparams.rank:
            return len(self._pool)
        groups = self._pool.labels if self.hparams.per_class else None
        return int(lowest_fraction(torch.zeros(len(self._pool)), float(self.hparams.filter_rate), groups).sum())

    def draw_stream(self, batch_size: int, start_step: int = 0) -> DBDDrawStream:
        """The per-step draws this module trains on (what :class:`~.draws.DBDFineTuneData` loads)."""
        assert self._pool is not None and self._extra is not None, "call setup() first"
        n_high = self.num_high()
        return DBDDrawStream(n_high, len(self._pool) - n_high + len(self._extra), batch_size,
                             int(self.hparams.unlabeled_ratio), self._epoch_steps(batch_size),
                             bool(self.hparams.rank), self._sample_seed, start_step)

    def resolve_draw(self, draw: dict, device: torch.device) -> dict:
        """The uint8 training batch of one draw (re-ranking first when its epoch starts)."""
        step, ranked_at = int(draw["step"]), int(draw["ranked_at"])
        if self._high is None or (self.hparams.rank and self._ranked_at != ranked_at):
            self.rerank(step)
        if self._ranked_at != ranked_at or int(draw["num_high"]) != int(self._high.sum()):
            raise ConfigError(f"the draw of step {step} belongs to another split (ranked at {ranked_at}, "
                              f"{int(draw['num_high'])} high-credible); train with DBDFineTuneData.")
        if self._all_images is None or self._all_images.device != device:
            self._all_images = torch.cat([self._pool.images, self._extra.images]).to(device)
            self._pool_labels = self._pool.labels.to(device)
        if self._index_sets is None:
            hi = torch.nonzero(self._high).flatten()
            lo = torch.nonzero(~self._high).flatten()
            self._index_sets = (hi.to(device), torch.cat([lo, len(self._high) + torch.arange(len(self._extra))]).to(device))
        hi, u_space = self._index_sets
        li, ui = hi[draw["labeled"].to(device)], u_space[draw["unlabeled"].to(device)]
        return {
            "labeled": {"x": self._all_images[li], "y": self._pool_labels[li], "idx": li},
            "unlabeled": {"x": self._all_images[ui], "idx": ui},
        }

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if "draw" in batch:
            batch = self.resolve_draw(batch["draw"], batch["draw"]["labeled"].device)
        elif "labeled" in batch:
            raise ConfigError("DBD fine-tuning trains on the draws of DBDFineTuneData, not on SSLDataModule batches.")
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self._pending_log is not None:
            e = self._pending_log
            self.log("dbd/poisons_in_high", float(e["poisons_in_high"]), batch_size=1)
            self.log("dbd/num_high", float(e["num_high"]), batch_size=1)
            self.log("dbd/labels_without_high", float(len(e["labels_without_high"])), batch_size=1)
            self._pending_log = None
        return loss

    def configure_optimizers(self):
        if self.hparams.optimizer == "sgd":
            return super().configure_optimizers()
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.adam_weight_decay)

    # ------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dbd_high"] = None if self._high is None else self._high.clone()
        checkpoint["dbd_ranked_at"] = self._ranked_at
        checkpoint["dbd_filter_history"] = list(self.filter_history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        high = checkpoint.get("dbd_high")
        self._high = None if high is None else high.to(torch.bool).cpu()
        self._ranked_at = checkpoint.get("dbd_ranked_at")
        self.filter_history = list(checkpoint.get("dbd_filter_history", []))
        self._index_sets = None
