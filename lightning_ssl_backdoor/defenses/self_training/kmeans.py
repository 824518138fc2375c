"""K-means in torch (Lloyd's algorithm, k-means++ seeding, restarts), batched and seeded.

Pal et al. (paper 002, Algorithm 2 and Sec. 4.4) cluster the L2-normalised SimCLR embeddings of the
labeled images into C clusters "using K-Means clustering [Bishop 2006]". The objective is the
inertia ``sum_i min_j ||x_i - c_j||^2``; each restart seeds the centres by k-means++ (Arthur and
Vassilvitskii 2007: the first centre uniformly, each next one with probability proportional to the
squared distance to the nearest chosen centre), then alternates assignment and mean updates until
no assignment changes (or ``iters``); a cluster that empties takes the point farthest from its
centre. The restart with the lowest inertia wins. Distances are computed ``batch_size`` rows at a
time, so memory is ``O(batch_size x k)``. Every draw comes from one ``torch.Generator`` seeded with
``seed``: the same inputs and seed give the same clustering.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["KMeansResult", "kmeans", "nearest_centre"]


@dataclass
class KMeansResult:
    centres: torch.Tensor  # [k, D]
    assign: torch.Tensor  # [N] int64
    inertia: float
    iterations: int


def nearest_centre(x: torch.Tensor, centres: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index [N], squared distance [N])`` of each row's nearest centre, ``batch_size`` rows at a time."""
    idx, dist = [], []
    c2 = centres.pow(2).sum(1)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size]
        d = (xb.pow(2).sum(1, keepdim=True) - 2.0 * xb @ centres.T + c2).clamp_min(0.0)
        m, i = d.min(1)
        idx.append(i)
        dist.append(m)
    return torch.cat(idx), torch.cat(dist)


def _plus_plus(x: torch.Tensor, k: int, g: torch.Generator, batch_size: int) -> torch.Tensor:
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d = nearest_centre(x, x[chosen], batch_size)[1]
    for _ in range(1, k):
        total = float(d.sum())
        if total <= 0:  # fewer distinct points than k: any point not yet chosen
            rest = [i for i in range(n) if i not in chosen]
            chosen.append(rest[int(torch.randint(len(rest), (1,), generator=g))])
        else:
            chosen.append(int(torch.multinomial((d / total).cpu(), 1, generator=g)))
        d = torch.minimum(d, nearest_centre(x, x[chosen[-1:]], batch_size)[1])
    return x[chosen].clone()


def kmeans(x: torch.Tensor, k: int, n_init: int = 10, iters: int = 300, seed: int = 0,
           batch_size: int = 4096) -> KMeansResult:
    """K-means of the rows of ``x`` ``[N, D]`` into ``k`` clusters (the best of ``n_init`` restarts)."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"k-means needs a non-empty N x D matrix, got shape {tuple(x.shape)}.")
    if not 1 <= int(k) <= x.shape[0]:
        raise ConfigError(f"k-means needs 1 <= k <= N, got k = {k} for {x.shape[0]} points.")
    if int(n_init) < 1 or int(iters) < 1:
        raise ConfigError(f"k-means needs n_init >= 1 and iters >= 1, got {n_init} and {iters}.")
    x = x.float()
    g = torch.Generator().manual_seed(int(seed))
    best = None
    for _ in range(int(n_init)):
        centres = _plus_plus(x, int(k), g, batch_size)
        assign = None
        for it in range(1, int(iters) + 1):
            new, dist = nearest_centre(x, centres, batch_size)
            if assign is not None and torch.equal(new, assign):
                break
            assign = new
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=int(k)).to(x.dtype)
            centres = sums / counts.clamp_min(1.0)[:, None]
            for j in torch.nonzero(counts == 0).flatten().tolist():  # an empty cluster: farthest point
                far = int(dist.argmax())
                centres[j] = x[far]
                dist[far] = 0.0
        assign, dist = nearest_centre(x, centres, batch_size)
        res = KMeansResult(centres, assign, float(dist.sum()), it)
        if best is None or res.inertia < best.inertia - 1e-9:
            best = res
    return best
