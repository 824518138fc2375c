"""Batch streams for iteration-based SSL training and sharded evaluation.

Both are ``IterableDataset``s that yield whole batches (index a uint8 tensor with a batch of
indices), so a ``DataLoader(stream, batch_size=None)`` costs one gather per batch. They shard
themselves across DDP ranks and loader workers, so Lightning never injects a sampler and
evaluation never pads or repeats an image (metrics over ranks equal a one-process evaluation).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from lightning_ssl_backdoor.data.imageset import ImageSet


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class EpochPermutationIndex:
    """Random access into an endless stream of seeded permutations of ``range(n)``.

    Position ``p`` of the stream is element ``p % n`` of permutation ``p // n``; permutation ``e``
    is drawn from a generator seeded with ``(seed, e)``, so any step can be reproduced without
    replaying the ones before it (this is what makes a resumed run see the same batches).
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty set")
        self.n, self.seed = int(n), int(seed)
        self._epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        assert self._perm is not None
        return self._perm

    def take(self, start: int, count: int) -> torch.Tensor:
        out = []
        pos, end = start, start + count
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            stop = min(self.n, offset + (end - pos))
            out.append(self._permutation(epoch)[offset:stop])
            pos += stop - offset
        return torch.cat(out)


class SSLTrainStream(IterableDataset):
    """Endless ``{"labeled": {x, y, idx}, "unlabeled": {x, idx}}`` uint8 batches.

    ``batch_size`` labeled and ``mu * batch_size`` unlabeled images per step (FixMatch's ratio mu).
    Each DDP rank draws from its own seeded stream; loader workers take interleaved steps.
    ``start_step`` lets a resumed run continue the exact stream it left.
    """

    def __init__(
        self,
        labeled: ImageSet,
        unlabeled: Optional[ImageSet],
        batch_size: int,
        mu: int,
        seed: int,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        self.labeled, self.unlabeled = labeled, unlabeled
        self.batch_size, self.mu, self.seed = int(batch_size), int(mu), int(seed)
        self.start_step = int(start_step)

    def __iter__(self) -> Iterator[dict]:
        rank, _ = _rank_world()
        wid, nw = _worker()
        lab = EpochPermutationIndex(len(self.labeled), self.seed * 7919 + 2 * rank)
        unl = None
        if self.unlabeled is not None and self.mu > 0 and len(self.unlabeled) > 0:
            unl = EpochPermutationIndex(len(self.unlabeled), self.seed * 7919 + 2 * rank + 1)
        step = self.start_step + wid
        bu = self.batch_size * self.mu
        while True:
            li = lab.take(step * self.batch_size, self.batch_size)
            batch = {
                "labeled": {"x": self.labeled.images[li], "y": self.labeled.labels[li], "idx": li}
            }
            if unl is not None:
                ui = unl.take(step * bu, bu)
                batch["unlabeled"] = {"x": self.unlabeled.images[ui], "idx": ui}
            yield batch
            step += nw


class EvalStream(IterableDataset):
    """Sharded, unpadded evaluation batches ``{x, y, idx[, x_trig]}``.

    Rank ``r`` of ``w`` takes images ``r, r + w, ...``; workers split that shard by batches.
    ``triggered`` (same length as ``images``) is the triggered copy of each image, carried in the
    same batch so ASR conditioned on the clean prediction needs no cross-loader pairing.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        triggered: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__()
        self.images, self.labels, self.triggered = images, labels, triggered
        self.batch_size = int(batch_size)

    def _shard(self) -> torch.Tensor:
        rank, world = _rank_world()
        return torch.arange(rank, len(self.labels), world)

    def __len__(self) -> int:
        n = len(self._shard())
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[dict]:
        idx = self._shard()
        wid, nw = _worker()
        for b, start in enumerate(range(0, len(idx), self.batch_size)):
            if b % nw != wid:
                continue
            i = idx[start : start + self.batch_size]
            batch = {"x": self.images[i], "y": self.labels[i], "idx": i}
            if self.triggered is not None:
                batch["x_trig"] = self.triggered[i]
            yield batch
