"""The data of DBD stage 3: a loader of per-step draws from the re-split pool.

DBD fine-tuning re-splits the pool every "epoch" (``rerank_every`` steps) into a labeled,
high-credible part and an unlabeled part by the *current* model's losses, so the images of a step
are only known once the model has reached it. What is known in advance is which draw a step makes:
step ``k`` of the epoch that started (was ranked) at step ``r`` takes positions
``[(k - r) B, (k - r + 1) B)`` of a seeded endless permutation of the high-credible set and
``unlabeled_ratio`` times as many of the unlabeled set (DBD: 64 + 64). :class:`DBDDrawStream` yields
those positions (``{"draw": {"step", "ranked_at", "num_high", "labeled", "unlabeled"}}``);
:class:`~.finetune.DBDFineTune` resolves them against its current split in
``on_after_batch_transfer``. Draws are a function of the step only, so a resumed run sees the very
same batches; DDP ranks and loader workers split the stream like
:class:`~lightning_ssl_backdoor.data.streams.SSLTrainStream`.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_ssl_backdoor.data import SSLDataModule
from lightning_ssl_backdoor.data.streams import EpochPermutationIndex
from lightning_ssl_backdoor.errors import ConfigError


def draw_seed(sample_seed: int, ranked_at: int, rank: int) -> int:
    """Seed of the permutations of the split ranked at step ``ranked_at`` (DDP rank ``rank``)."""
    return (int(sample_seed) * 1_000_003 + int(ranked_at)) * 16 + int(rank)


class DBDDrawStream(IterableDataset):
    """Endless per-step draws (positions into the high-credible and unlabeled index sets).

    Args:
        num_high, num_unlabeled: sizes of the high-credible set and of the unlabeled set (the
            low-credible pool samples plus the extra unlabeled images) after a ranking.
        batch_size: labeled draws per step; ``unlabeled_ratio * batch_size`` unlabeled ones.
        epoch_steps: steps between rankings (0: one ranking, at step 0).
        rerank: whether the split is ranked again every ``epoch_steps`` steps.
        sample_seed, start_step: the data seed and the first step (a resumed run's global step).
    """

    def __init__(self, num_high: int, num_unlabeled: int, batch_size: int, unlabeled_ratio: int,
                 epoch_steps: int, rerank: bool, sample_seed: int, start_step: int = 0) -> None:
        super().__init__()
        if num_high < 1:
            raise ConfigError("the high-credible set is empty: raise filter_rate or add labeled data.")
        if num_unlabeled < 1:
            raise ConfigError("DBD fine-tuning has no unlabeled images: lower filter_rate or add unlabeled data.")
        self.num_high, self.num_unlabeled = int(num_high), int(num_unlabeled)
        self.batch_size, self.unlabeled_ratio = int(batch_size), int(unlabeled_ratio)
        self.epoch_steps, self.rerank = int(epoch_steps), bool(rerank)
        self.sample_seed, self.start_step = int(sample_seed), int(start_step)

    def ranked_at(self, step: int) -> int:
        """The step at which the split that step ``step`` trains on was ranked."""
        if self.rerank and self.epoch_steps > 0:
            return step - step % self.epoch_steps
        return 0

    def __iter__(self) -> Iterator[dict]:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        orders: dict[int, tuple] = {}
        b, bu = self.batch_size, self.unlabeled_ratio * self.batch_size
        step = self.start_step + wid
        while True:
            r = self.ranked_at(step)
            if r not in orders:
                seed = draw_seed(self.sample_seed, r, rank)
                orders = {r: (EpochPermutationIndex(self.num_high, 2 * seed),
                              EpochPermutationIndex(self.num_unlabeled, 2 * seed + 1))}
            lab, unl = orders[r]
            k = step - r
            yield {"draw": {"step": torch.tensor(step), "ranked_at": torch.tensor(r),
                            "num_high": torch.tensor(self.num_high),
                            "labeled": lab.take(k * b, b), "unlabeled": unl.take(k * bu, bu)}}
            step += nw


class DBDFineTuneData(SSLDataModule):
    """:class:`SSLDataModule` whose training loader yields the draws of the fine-tuning module it
    trains (:meth:`DBDFineTune.draw_stream <.finetune.DBDFineTune.draw_stream>`); evaluation as usual."""

    def train_dataloader(self) -> DataLoader:
        module = getattr(self.trainer, "lightning_module", None)
        if module is None or not hasattr(module, "draw_stream"):
            raise ConfigError("DBDFineTuneData feeds DBDFineTune only; use SSLDataModule for other modules.")
        return self._loader(module.draw_stream(self.batch_size, int(self.trainer.global_step)))
