"""Pixel-space agglomerative clustering detector (Carlini 2021, Sec. 5.2).

An interpolation poison set ``x_a = (1 - a) x' + a x*`` is a chain of images, each very close to the
next in pixel space, so single-linkage agglomerative clustering (merge the two closest sets, repeat
until the smallest distance exceeds a threshold) puts the whole chain into one cluster long before
benign images merge; the paper removes the largest cluster. Plain agglomerative clustering needs all
``N^2 / 2`` pairwise distances (10 GB for 50,000 CIFAR images), so this module computes the same
single-linkage hierarchy on a sparse k-nearest-neighbour graph:

1. **Space.** Pixels as float32 in [0, 1], flattened (or the given ``features``).
2. **Candidate neighbours.** A seeded randomized PCA (fitted on <= 20,000 rows) reduces the vectors
   to ``pca_dim`` dimensions; an exact blocked search there (:func:`chunked_knn`) proposes
   ``2 * n_neighbors`` candidates per image without ever holding an ``N x N`` matrix.
3. **Exact edges.** Candidate distances are recomputed in the full space (float64, a sampled
   sparse-dense product for the pair dot products); the ``n_neighbors`` nearest become undirected
   edges of a kNN graph.
4. **Single linkage.** The minimum spanning forest of that graph (``scipy.sparse.csgraph``) holds
   every merge of single-linkage clustering restricted to the graph. This equals full single
   linkage whenever each merge's closest pair is among either image's ``n_neighbors`` nearest (and
   was proposed by the PCA search); a chain's links are its members' nearest neighbours.
   Kruskal's order over the forest gives every image its **merge height** ``t_i``: the linkage
   distance at which its cluster first reaches ``min_cluster_size`` images.
5. **Scores and flags.** ``score_i = log(median_j t_j) - log(t_i)`` (higher = the image sits in a
   tight group much earlier than a typical image; chain members score highest). Cutting the
   hierarchy at ``threshold`` (default ``threshold_ratio * median_j t_j``) gives clusters; those with
   at least ``min_cluster_size`` images are suspicious, and the largest one (or all of them with
   ``largest_only=False``) is flagged, as in the paper.

Limitation (paper, Sec. 5.2): the distance must suit the attack; pixel L2 finds pixel blends but not
colour-jittered or translated poisons, and natural near-duplicates form small false-positive groups.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.defenses.detector import DetectionResult
from lightning_ssl_backdoor.defenses.knn import SMALL_WORK, chunked_knn, ieee_float32_matmul, one_thread, pair_dots
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["cluster_detect", "single_linkage_heights"]

_PCA_FIT_ROWS = 20_000


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def _vectors(images, features) -> torch.Tensor:
    """Float32 ``[N, D]`` vectors: ``features`` if given, else pixels in [0, 1] flattened."""
    if features is not None:
        x = torch.as_tensor(features)
        if x.ndim < 2:
            raise ConfigError(f"features must have shape [N, D], got {tuple(x.shape)}.")
        x = x.reshape(x.shape[0], -1).float()
        if images is not None and len(images) != x.shape[0]:
            raise ConfigError(f"features has {x.shape[0]} rows but there are {len(images)} images.")
        if not torch.isfinite(x).all():
            raise ConfigError("features contain NaN or infinite values.")
        return x
    if images is None:
        raise ConfigError("give images (uint8 [N, C, H, W] or an ImageSet) or features [N, D].")
    if isinstance(images, ImageSet):
        images = images.images
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise ConfigError("images must be a uint8 tensor of shape [N, C, H, W] or an ImageSet.")
    return images.reshape(images.shape[0], -1).float().div_(255.0)


def _orthonormalise(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of a tall ``y`` via the eigendecomposition of its small Gram
    matrix (only ``l x l`` LAPACK work; tiny directions are dropped)."""
    with one_thread(y.device):
        w, u = torch.linalg.eigh((y.T @ y).double())
    keep = w > w.max() * 1e-10
    return y @ (u[:, keep] / w[keep].sqrt()).to(y.dtype)


def _pca_project(x: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Seeded randomized PCA (Gaussian range finder + 4 power iterations) of at most 20,000 rows,
    applied to all rows: ``(x - mean) @ V[:, :dim]`` (fewer columns if the data has lower rank)."""
    n, d = x.shape
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if n > _PCA_FIT_ROWS:
        rows = torch.randperm(n, generator=gen)[:_PCA_FIT_ROWS].sort().values.to(x.device)
        fit = x[rows]
    else:
        fit = x
    mean = fit.mean(0)
    fit = fit - mean
    width = min(d, dim + 10)
    q = _orthonormalise(fit @ torch.randn(d, width, generator=gen).to(x.device))
    for _ in range(4):
        q = _orthonormalise(fit @ _orthonormalise(fit.T @ q))
    b = q.T @ fit  # [l, d]: the data in the found subspace
    with one_thread(b.device):
        w, u = torch.linalg.eigh((b @ b.T).double())
    top = torch.argsort(w, descending=True)[:dim]
    top = top[w[top] > w.max() * 1e-10]
    basis = (b.T.double() @ (u[:, top] / w[top].sqrt())).to(x.dtype)  # [d, dim] right singular vecs
    return (x - mean) @ basis


def _exact_neighbours(x: torch.Tensor, cand: torch.Tensor,
                      k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-space L2 distances from every row to its candidate rows; the ``k`` nearest
    ``(distance, index)``, ties broken by the lower index (deterministic).

    Computed as ``||x_i||^2 + ||x_j||^2 - 2 x_i.x_j`` on float64 centred vectors, whose rounding
    error (~1e-13 relative to the squared norms) is far below any pixel-level distance (one grey
    level on one pixel is 1.5e-5); values under that error bound are set to exactly 0.
    """
    x64 = x.double()
    x64 -= x64.mean(0)
    cand = torch.sort(cand, dim=1).values
    sq = (x64 * x64).sum(1)
    total = sq[:, None] + sq[cand]
    d2 = total - 2.0 * pair_dots(x64, x64, cand)
    # below the float64 rounding bound of the formula the pair is identical: make it exactly 0
    d2[d2 <= 4.0 * x.shape[1] * torch.finfo(torch.float64).eps * total] = 0.0
    del x64
    order = torch.sort(d2, dim=1, stable=True).indices[:, :k]
    return torch.gather(d2, 1, order).sqrt_(), torch.gather(cand, 1, order)


def single_linkage_heights(n: int, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                           min_cluster_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimum spanning forest of a weighted undirected graph and per-node merge heights.

    Returns ``(forest, heights)``: ``forest`` is ``[E, 3]`` (i, j, weight) sorted by weight, and
    ``heights[i]`` is the smallest single-linkage distance at which node ``i``'s cluster has at least
    ``min_cluster_size`` nodes (``inf`` if its connected component is smaller).
    """
    if min_cluster_size <= 1:
        return np.zeros((0, 3)), np.zeros(n)
    heights = np.full(n, np.inf)
    if rows.size == 0:
        return np.zeros((0, 3)), heights
    i, j = np.minimum(rows, cols), np.maximum(rows, cols)
    keep = i != j
    i, j, w = i[keep], j[keep], weights[keep].astype(np.float64)
    key = i.astype(np.int64) * n + j
    key, first = np.unique(key, return_index=True)  # an edge found from both ends is kept once
    i, j, w = i[first], j[first], w[first]
    # csgraph drops zero-weight entries: shift every weight by the same positive constant, which
    # leaves the minimum spanning forest unchanged, and shift back afterwards
    shift = max(float(w.max()), 1.0) * 1e-6
    graph = coo_matrix((w + shift, (i, j)), shape=(n, n)).tocsr()
    mst = minimum_spanning_tree(graph).tocoo()
    fw = mst.data - shift
    order = np.lexsort((mst.col, mst.row, fw))
    fi, fj, fw = mst.row[order].tolist(), mst.col[order].tolist(), np.maximum(fw[order], 0.0)

    parent = list(range(n))
    size = [1] * n
    pending: list = [[v] for v in range(n)]  # members whose height is still unknown (small clusters)

    def find(v: int) -> int:
        root = v
        while parent[root] != root:
            root = parent[root]
        while parent[v] != root:
            parent[v], v = root, parent[v]
        return root

    fw_list = fw.tolist()
    for a, b, weight in zip(fi, fj, fw_list):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        pa, pb = pending[ra], pending[rb]
        pending[rb] = None
        if size[ra] >= min_cluster_size:
            for members in (pa, pb):
                if members:
                    heights[members] = weight
            pending[ra] = None
        else:
            pa.extend(pb)
    forest = np.stack([np.asarray(fi, dtype=np.float64), np.asarray(fj, dtype=np.float64), fw], 1)
    return forest, heights


def cluster_detect(
    images: Union[torch.Tensor, ImageSet, None] = None,
    n_neighbors: int = 10,
    pca_dim: Optional[int] = 64,
    threshold: Optional[float] = None,
    min_cluster_size: int = 5,
    features: Optional[torch.Tensor] = None,
    *,
    threshold_ratio: float = 0.25,
    largest_only: bool = True,
    seed: int = 0,
    chunk_size: Optional[int] = None,
) -> DetectionResult:
    """Single-linkage agglomerative clustering on a kNN graph (Sec. 5.2); see the module docstring.

    Args:
        images: uint8 ``[N, C, H, W]`` tensor or an :class:`ImageSet` (may be ``None`` when
            ``features`` is given).
        n_neighbors: edges per image in the kNN graph (clipped to ``N - 1``).
        pca_dim: dimensions of the neighbour search space (``None`` or >= D: no reduction); edges
            are always measured exactly in the full space.
        threshold: single-linkage cut distance (L2 in [0, 1] pixel units, or feature units).
            ``None``: ``threshold_ratio`` times the median merge height.
        min_cluster_size: the smallest group that counts as a cluster (and the size used for the
            merge heights behind the scores).
        features: optional ``[N, D]`` vectors to cluster instead of pixels (e.g. penultimate
            features).
        threshold_ratio: the automatic cut as a fraction of the median merge height.
        largest_only: flag only the largest suspicious cluster (the paper's rule) instead of all.
        seed: seed of the PCA's random sampling (the result is deterministic for a given seed).
        chunk_size: block side of the neighbour search (``None``: automatic from free memory).

    Returns:
        :class:`DetectionResult` with float64 scores on the input's device (higher = more
        suspicious), the keep mask and ``info`` (threshold, merge heights, flagged cluster sizes).
    """
    n_neighbors = _check_int("n_neighbors", n_neighbors, 1)
    min_cluster_size = _check_int("min_cluster_size", min_cluster_size, 2)
    if pca_dim is not None:
        pca_dim = _check_int("pca_dim", pca_dim, 1)
    if threshold is not None and not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ConfigError(f"threshold must be a non-negative distance or None, got {threshold!r}.")
    if not (isinstance(threshold_ratio, (int, float)) and threshold_ratio > 0):
        raise ConfigError(f"threshold_ratio must be positive, got {threshold_ratio!r}.")
    x = _vectors(images, features)
    n, d = x.shape
    device = x.device
    if n < 2:
        raise ConfigError(f"clustering needs at least 2 samples, got {n}.")
    k = min(n_neighbors, n - 1)
    m = min(n - 1, 2 * k)
    use_pca = pca_dim is not None and pca_dim < d and pca_dim < n
    small = float(n) * n * (pca_dim if use_pca else d) + float(n) * d * 100 < SMALL_WORK
    with ieee_float32_matmul(), one_thread(device, enabled=small):
        z = _pca_project(x, pca_dim, seed) if use_pca else x - x.mean(0)
        _, cand = chunked_knn(z, z, m, exclude=torch.arange(n, device=device), chunk_size=chunk_size)
        dist, idx = _exact_neighbours(x, cand, k)
    rows = np.repeat(np.arange(n), k)
    forest, heights = single_linkage_heights(n, rows, idx.cpu().numpy().reshape(-1),
                                             dist.cpu().numpy().reshape(-1), min_cluster_size)

    finite = np.isfinite(heights)
    if finite.any():
        median = float(np.median(heights[finite]))
        cap = float(heights[finite].max()) * 2.0 + 1e-12
    else:  # no group of min_cluster_size in the graph at all (tiny N)
        median, cap = 1.0, 1.0
    h = np.where(finite, heights, cap)
    tiny = max(median, 1e-12) * 1e-9
    scores = math.log(max(median, 1e-300)) - np.log(np.maximum(h, tiny))
    cut = float(threshold) if threshold is not None else float(threshold_ratio * median)

    suspicious = finite & (heights <= cut)
    flagged = np.zeros(n, dtype=bool)
    sizes: list[int] = []
    if suspicious.any():
        # clusters at the cut: components of the spanning-forest edges no longer than the cut
        short = forest[forest[:, 2] <= cut]
        graph = coo_matrix((np.ones(short.shape[0]), (short[:, 0].astype(np.int64),
                                                      short[:, 1].astype(np.int64))), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        lab = labels[suspicious]
        uniq, counts = np.unique(lab, return_counts=True)
        big = counts >= min_cluster_size
        uniq, counts = uniq[big], counts[big]
        if uniq.size:
            order = np.lexsort((uniq, -counts))  # largest first, ties by label (deterministic)
            uniq, counts = uniq[order], counts[order]
            chosen = uniq[:1] if largest_only else uniq
            flagged = np.isin(labels, chosen)
            sizes = [int(c) for c in (counts[:1] if largest_only else counts)]
    info = {
        "method": "knn_single_linkage",
        "n_neighbors": k,
        "pca_dim": pca_dim if use_pca else None,
        "threshold": cut,
        "median_merge_height": median,
        "min_cluster_size": min_cluster_size,
        "largest_only": bool(largest_only),
        "flagged_cluster_sizes": sizes,
        "merge_heights": torch.from_numpy(heights).to(device),
    }
    return DetectionResult(
        scores=torch.from_numpy(scores).to(device),
        keep_mask=torch.from_numpy(~flagged).to(device),
        info=info,
    )
