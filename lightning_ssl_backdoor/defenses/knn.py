"""Exact k-nearest-neighbour search in blocks: never an ``N x N`` distance matrix in memory.

Shared by the training-dynamics influence defense (:mod:`~lightning_ssl_backdoor.defenses.influence`)
and the clustering detector (:mod:`~lightning_ssl_backdoor.defenses.clustering`).

- :func:`chunked_knn`: the ``k`` nearest keys (squared L2) of every query, one memory-sized block of
  ``||b||^2 - 2 q.b`` at a time with a running ``torch.topk``;
- :func:`pair_dots`: dot products of listed (query, key) pairs, for exact re-ranking;
- :func:`mean_knn_sqdist`: the mean of the ``k`` smallest ``||a_i - b_j||^2`` over ``j != i``, exact
  in float64 and proven so;
- :func:`one_thread` and :func:`ieee_float32_matmul`: the CPU-thread and float32-precision settings
  the searches run under (``SMALL_WORK``: below this many multiply-adds, one thread).

:func:`mean_knn_sqdist` with source vectors ``A_i`` and target vectors ``B_j`` (centred by a common
shift; the influence defense's ``mu`` vectors):

1. *Candidate search.* Blocks of ``||B_j||^2 - 2 A_i.B_j`` (one float32 matrix product per block;
   the row constant ``||A_i||^2`` does not change a row's ranking) feed a running ``torch.topk`` that
   keeps ``k + max(8, k)`` candidates per row.
2. *Exact re-check.* The candidates are ranked in float64 and the ``k`` nearest are recomputed as
   float64 sums of squared differences (no cancellation); their mean is the score.
3. *Proof.* A rigorous float32 rounding bound shows that no non-candidate can be closer than the
   k-th exact candidate, so the result does not depend on float32 luck.

When the ``mu`` vectors are nearly low-dimensional (smooth training dynamics), step 1 first runs on
``p + 1``-dimensional lower-bound vectors ``[x.V_p, ||x.V_rest||]`` (``V``: principal axes), whose
distances never exceed the true ones, so the same proof holds; ``p`` is the smallest of ``D/8,
D/4, D/2`` and of the number of non-null axes (softmax rows sum to 1, which leaves ``K - 1`` null
axes) that proves 98% of a 128-row probe, else the full dimension is used; the probe also picks the
candidate pool (``k + max(8, k)``, 4x or 16x that). Rows left unproven are searched again in all
dimensions with 4x larger pools (up to 1024), then in float64.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, Optional

import torch

from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["SMALL_WORK", "chunked_knn", "ieee_float32_matmul", "mean_knn_sqdist", "one_thread", "pair_dots"]

MAX_POOL = 1024  # largest candidate pool of the float32 passes
_MIN_BLOCK_BYTES = 32 << 20
_MAX_BLOCK_BYTES = 512 << 20


# --------------------------------------------------------------------------------------------------
# memory-aware blocked k-nearest-neighbour search (shared with the clustering detector)
# --------------------------------------------------------------------------------------------------


def _available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free memory, else MemAvailable from /proc/meminfo."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _block_shape(n_rows: int, n_cols: int, itemsize: int, device: torch.device,
                 chunk_size: Optional[int]) -> tuple[int, int]:
    """Rows and columns of one distance block: ``chunk_size`` squared, or automatic from free memory
    (wide row blocks of at most 1/8 of free memory, between 32 MiB and 512 MiB)."""
    if chunk_size is not None:
        return max(1, min(chunk_size, n_rows)), max(1, min(chunk_size, n_cols))
    budget = min(_MAX_BLOCK_BYTES, max(_MIN_BLOCK_BYTES, _available_memory_bytes(device) // 8))
    cells = max(1, budget // itemsize)
    min_rows = min(n_rows, 256)
    cols = n_cols if min_rows * n_cols <= cells else max(1, cells // min_rows)
    rows = max(1, min(n_rows, cells // cols))
    return rows, cols


# Work below this many multiply-adds runs on one CPU thread: on a busy machine every parallel region
# of a small op can wait milliseconds for a descheduled sibling thread (measured: a 100x100 eigh took
# 7 s with 2 threads and 0.05 s with 1), and small ops gain nothing from threads anyway.
SMALL_WORK = 2e8


@contextlib.contextmanager
def one_thread(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Run the enclosed CPU work on one thread (small LAPACK calls, small problems)."""
    old = torch.get_num_threads()
    if enabled and device.type == "cpu" and old > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


@contextlib.contextmanager
def ieee_float32_matmul() -> Iterator[None]:
    """Disable TF32 / bf16 shortcuts in float32 matrix products (the rounding bound assumes IEEE)."""
    old_precision = torch.get_float32_matmul_precision()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        if old_precision != "highest":
            torch.set_float32_matmul_precision("highest")
        if old_tf32:
            torch.backends.cuda.matmul.allow_tf32 = False
        yield
    finally:
        if old_precision != "highest":
            torch.set_float32_matmul_precision(old_precision)
        if old_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True


def chunked_knn(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    exclude: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    keys_sqnorm: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` keys nearest (squared L2) to every query, block by block, in ``queries.dtype``.

    Returns ``(sqdist, index)``, both ``[Nq, k]`` and sorted ascending per row; ``sqdist`` is computed
    as ``||q||^2 + ||b||^2 - 2 q.b`` and so carries that formula's rounding error (see
    :func:`influence_scores` for how it is made exact). ``exclude`` (int64 ``[Nq]``, -1 = none) names
    one key per query that must not be returned (the query itself). Memory: one block of
    ``chunk_size x chunk_size`` (or an automatic wide row block) plus ``O((Nq + Nk) * k)``.
    """
    nq, nk = queries.shape[0], keys.shape[0]
    n_valid = nk - (1 if exclude is not None else 0)
    if not 1 <= k <= max(n_valid, 0):
        raise ConfigError(f"cannot return {k} neighbours from {n_valid} candidate keys; lower k.")
    dev, dt = queries.device, queries.dtype
    keys = keys.to(device=dev, dtype=dt)
    bn = (keys * keys).sum(1) if keys_sqnorm is None else keys_sqnorm.to(device=dev, dtype=dt)
    rows, cols = _block_shape(nq, nk, queries.element_size(), dev, chunk_size)
    out_v = torch.empty(nq, k, dtype=dt, device=dev)
    out_i = torch.empty(nq, k, dtype=torch.int64, device=dev)
    inf = torch.tensor(float("inf"), dtype=dt, device=dev)
    for r0 in range(0, nq, rows):
        q = queries[r0:r0 + rows]
        ex = None if exclude is None else exclude[r0:r0 + rows].to(dev)
        best_v = best_i = None
        for c0 in range(0, nk, cols):
            c1 = min(nk, c0 + cols)
            block = torch.addmm(bn[c0:c1], q, keys[c0:c1].T, alpha=-2.0)
            if ex is not None:
                hit = ((ex >= c0) & (ex < c1)).nonzero().squeeze(1)
                if hit.numel():
                    block[hit, ex[hit] - c0] = inf
            v, i = torch.topk(block, min(k, c1 - c0), dim=1, largest=False, sorted=False)
            i = i + c0
            if best_v is None:
                best_v, best_i = v, i
            else:
                merged_v, merged_i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                best_v, j = torch.topk(merged_v, min(k, merged_v.shape[1]), dim=1, largest=False,
                                       sorted=False)
                best_i = torch.gather(merged_i, 1, j)
        order = torch.argsort(best_v, dim=1)
        out_v[r0:r0 + rows] = torch.gather(best_v, 1, order) + (q * q).sum(1, keepdim=True)
        out_i[r0:r0 + rows] = torch.gather(best_i, 1, order)
    return out_v, out_i


def pair_dots(queries: torch.Tensor, keys: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``queries[i] . keys[cand[i, j]]`` for every listed pair: ``[Nq, m]`` in ``queries.dtype``.

    A sampled sparse-dense product (``torch.sparse.sampled_addmm``) reads each listed key row once
    and never builds the ``[Nq, m, D]`` gather; where torch lacks it, candidate rows are gathered in
    chunks of ~64 MiB instead.
    """
    nq, m = cand.shape
    keys = keys.to(device=queries.device, dtype=queries.dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(
                torch.arange(0, nq * m + 1, m, device=queries.device), cand.reshape(-1),
                torch.zeros(nq * m, dtype=queries.dtype, device=queries.device),
                size=(nq, keys.shape[0]),
            )
            return torch.sparse.sampled_addmm(pattern, queries, keys.T).values().view(nq, m)
    except (RuntimeError, NotImplementedError):
        out = torch.empty(nq, m, dtype=queries.dtype, device=queries.device)
        step = max(1, (64 << 20) // max(1, queries.element_size() * m * queries.shape[1]))
        for r0 in range(0, nq, step):
            rows = keys[cand[r0:r0 + step]]  # [r, m, D]
            out[r0:r0 + step] = torch.bmm(rows, queries[r0:r0 + step, :, None]).squeeze(2)
        return out


def _rounding_bound(dtype: torch.dtype, dim: int, a_norm: torch.Tensor,
                    b_max: torch.Tensor) -> torch.Tensor:
    """Bound on the error of ``||a||^2 + ||b||^2 - 2 a.b`` evaluated in ``dtype`` (inputs rounded
    to ``dtype`` too): a dot product of length D errs by at most
    ``D*u*sum|a_k b_k| <= D*u*||a||*||b||``; doubled for the norms, the input rounding and the
    final additions."""
    u = torch.finfo(dtype).eps / 2
    return 2.0 * (dim + 4) * u * (a_norm + b_max).square()


class _Space:
    """Source/target vectors a candidate search runs on, with the target-side quantities prepared
    once (the exact ``mu`` vectors, or lower-bound vectors of them)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, lower_bound: bool = False) -> None:
        self.a, self.b, self.lower_bound = a, b, lower_bound
        self.b_sq = (b * b).sum(1)
        self.b_max = self.b_sq.max().sqrt()
        self._keys: dict = {}

    @property
    def dim(self) -> int:
        return int(self.a.shape[1])

    def keys(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if dtype not in self._keys:
            self._keys[dtype] = (self.b.to(dtype), self.b_sq.to(dtype))
        return self._keys[dtype]


def _candidate_scores(exact: _Space, rows_idx: torch.Tensor, cand: torch.Tensor,
                      k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and largest of the ``k`` smallest influences among each row's candidates.

    The candidates are ranked with float64 dot products (:func:`pair_dots`); the ``k`` kept are
    then recomputed as float64 sums of squared differences (no cancellation), so each score is a
    mean of ``k`` exactly evaluated influences (a near tie within the float64 rounding bound may
    pick either member).
    """
    q, b64 = exact.a[rows_idx], exact.b
    ranked = (q * q).sum(1, keepdim=True) + exact.b_sq[cand] - 2.0 * pair_dots(q, b64, cand)
    best = torch.gather(cand, 1, torch.topk(ranked, k, dim=1, largest=False).indices)
    values = torch.empty(best.shape, dtype=torch.float64, device=q.device)
    step = max(1, (64 << 20) // max(1, 8 * k * q.shape[1]))  # [rows, k, D] chunks of ~64 MiB
    for r0 in range(0, best.shape[0], step):
        values[r0:r0 + step] = (q[r0:r0 + step, None, :] - b64[best[r0:r0 + step]]).square_().sum(-1)
    return values.mean(1), values.max(1).values


def _principal_axes(a64: torch.Tensor, b64: torch.Tensor,
                    max_rows: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal variances (descending) and directions (``[D, D]``, orthonormal columns) of the
    stacked source and target vectors, from at most ``max_rows`` evenly spaced rows of each."""
    n = a64.shape[0]
    if max_rows is not None and n > max_rows:
        rows = torch.linspace(0, n - 1, max_rows, device=a64.device).round().long()
        a64, b64 = a64[rows], b64[rows]
    mean = (a64.sum(0) + b64.sum(0)) / (2 * a64.shape[0])
    cov = (a64 - mean).T @ (a64 - mean) + (b64 - mean).T @ (b64 - mean)
    with one_thread(cov.device):
        vals, vecs = torch.linalg.eigh(cov)
    return vals.flip(0), vecs.flip(1).contiguous()


def _lower_bound_vectors(proj: torch.Tensor, p: int) -> torch.Tensor:
    """``[x.V_p, ||x.V_rest||]`` from ``proj = x @ V`` (``V`` any orthonormal basis): for any two
    rows the squared distance of these ``p + 1``-vectors is
    ``||P(a - b)||^2 + (||Ra|| - ||Rb||)^2 <= ||a - b||^2`` (P, R: projections on the first ``p``
    axes and on the rest), with equality when the dropped parts are equal."""
    return torch.cat([proj[:, :p], proj[:, p:].norm(dim=1, keepdim=True)], 1)


def _guarded_scores(exact: _Space, space: _Space, k: int, m: int, dtype: torch.dtype,
                    chunk_size: Optional[int], rows_idx: torch.Tensor):
    """Scores of the rows ``rows_idx`` via a ``dtype`` search in ``space`` for ``m`` candidates and
    an exact float64 re-check on the ``mu`` vectors of ``exact``.

    Returns ``(scores, proven)``; ``proven`` marks the rows whose candidates provably include the
    k nearest targets: the m-th candidate's searched value, less its rounding bound, is no smaller
    than the k-th exact influence (plus the float64 bound of the re-check's ranking).
    """
    n = exact.b.shape[0]
    m = min(n - 1, m)
    keys, keys_sq = space.keys(dtype)
    approx, cand = chunked_knn(space.a[rows_idx].to(dtype), keys, m, exclude=rows_idx,
                               chunk_size=chunk_size, keys_sqnorm=keys_sq)
    means, kth = _candidate_scores(exact, rows_idx, cand, k)
    if m == n - 1:  # every other example is a candidate: nothing left to prove
        return means, torch.ones_like(means, dtype=torch.bool)
    bound = _rounding_bound(dtype, space.dim, space.a[rows_idx].norm(dim=1), space.b_max)
    # float64 errors: the re-check's ranking, and the projection behind lower-bound vectors
    bound += (6.0 if space.lower_bound else 2.0) * _rounding_bound(
        torch.float64, exact.dim, exact.a[rows_idx].norm(dim=1), exact.b_max)
    proven = approx[:, -1].double() - bound >= kth
    return means, proven


def _choose_plan(exact: _Space, k: int, chunk_size: Optional[int]) -> tuple[_Space, int]:
    """``(space, m)`` for the first pass: the cheapest search space and candidate pool that prove
    >= 98% of a probe of 128 rows.

    Search spaces, cheapest first: lower-bound vectors in ``D/8``, ``D/4``, ``D/2`` principal axes
    and in the non-null axes (softmax rows sum to 1, so every ``C``-block of ``mu`` has a nearly
    constant sum: ``K - 1`` axes carry almost no variance), then all dimensions. Pools:
    ``k + max(8, k)``, then 4x and 16x that (ties wider than the pool, e.g. a group of
    near-identical trajectories that is the nearest group of many rows, need a larger pool).
    """
    n, dim = exact.a.shape
    base = k + max(8, k)
    if n < 256:
        return exact, base
    # the bound holds for any orthonormal axes: a subsample is enough to find good ones
    vals, axes = _principal_axes(exact.a, exact.b, max_rows=8192)
    p_null = int((vals > vals[0].clamp(min=1e-300) * 1e-6).sum())
    dims = sorted({max(1, dim // 8), max(1, dim // 4), max(1, dim // 2), max(1, p_null)})
    dims = [p for p in dims if p + 1 < dim and p <= p_null]
    spaces = [exact]
    if dims:
        pa, pb = exact.a @ axes, exact.b @ axes
        spaces = [_Space(_lower_bound_vectors(pa, p), _lower_bound_vectors(pb, p), True)
                  for p in dims] + spaces
        del pa, pb
    gen = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randperm(n, generator=gen)[:128].sort().values.to(exact.a.device)
    for m in (base, 4 * base, 16 * base):
        m = min(m, n - 1)
        for space in spaces:
            _, proven = _guarded_scores(exact, space, k, m, torch.float32, chunk_size, probe)
            if float(proven.double().mean()) >= 0.98:
                return space, m
        if m == n - 1:
            break
    return exact, base


def mean_knn_sqdist(
    a64: torch.Tensor,
    b64: torch.Tensor,
    k: int,
    chunk_size: Optional[int] = None,
    approximate: bool = False,
    projection_dim: int = 64,
) -> torch.Tensor:
    """``score[i] = mean of the k smallest ||a64[i] - b64[j]||^2 over j != i``, float64 ``[N]``.

    ``a64`` and ``b64`` are float64 ``[N, D]`` (row ``i`` of both is the same example, excluded from
    its own neighbours); ``k`` is in ``[1, N - 1]``. Exact (see the module docstring) unless
    ``approximate``: then candidates are searched in the top ``projection_dim`` principal directions
    and ``4 * (k + max(8, k))`` of them re-ranked exactly, so a score can only err upwards.
    """
    n = a64.shape[0]
    dev = a64.device
    margin = max(8, k)
    all_rows = torch.arange(n, device=dev)
    small = float(n) * n * a64.shape[1] < SMALL_WORK
    # distances are unchanged by a common shift; centring shrinks the norms, and with them the
    # rounding bounds below
    centre = (a64.mean(0) + b64.mean(0)) / 2
    a64, b64 = a64 - centre, b64 - centre
    exact = _Space(a64, b64)
    with ieee_float32_matmul(), one_thread(dev, enabled=small):
        if approximate and projection_dim < a64.shape[1]:
            basis = _principal_axes(a64, b64)[1][:, : int(projection_dim)]
            m = min(n - 1, 4 * (k + margin))
            _, cand = chunked_knn((a64 @ basis).float(), (b64 @ basis).float(), m, exclude=all_rows,
                                  chunk_size=chunk_size)
            return _candidate_scores(exact, all_rows, cand, k)[0]
        # pass 1: float32 search in the space and with the pool that a probe of rows proved
        space, m = _choose_plan(exact, k, chunk_size)
        scores, proven = _guarded_scores(exact, space, k, m, torch.float32, chunk_size, all_rows)
        del space
        # rows not proven: a near tie wider than the pool (e.g. a group of near-identical
        # trajectories that is the nearest group of many rows) or a loose lower bound; search again
        # in all dimensions with 4x larger pools, then once more in float64
        redo = (~proven).nonzero().squeeze(1)
        while redo.numel() and m < min(n - 1, MAX_POOL):
            m = min(n - 1, 4 * m)
            scores[redo], ok = _guarded_scores(exact, exact, k, m, torch.float32, chunk_size, redo)
            redo = redo[~ok]
        if redo.numel():
            scores[redo] = _guarded_scores(exact, exact, k, m, torch.float64, chunk_size, redo)[0]
    return scores
