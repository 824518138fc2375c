"""Per-rank augmentation generators for data-parallel training (issue 32).

Under DDP every rank is seeded alike (``seed_everything(seed)``), so device augmentation drawn from
the global RNG would give every rank the same flips, crops and RandAugment ops for its shard: the
effective augmentation diversity of the global batch would be that of one rank. Each rank instead
draws from its own ``torch.Generator`` seeded from ``(seed, rank, step)``: reproducible per rank for
a given seed, different across ranks, and re-seeded deterministically from the step on a resume. A
single process keeps the global RNG (its runs are unchanged by this module).
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["distributed_rank", "rank_generator", "rank_seed"]

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A 63-bit seed mixed from ``(seed, rank, step)`` by SplitMix64 (distinct inputs give
    unrelated seeds; the same inputs the same seed)."""
    z = _splitmix64(int(seed) & _MASK)
    z = _splitmix64(z ^ (int(rank) & _MASK))
    z = _splitmix64(z ^ (int(step) & _MASK))
    return z >> 1


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())
    return 0, 1


def rank_generator(seed: int, rank: int, device: torch.device | str = "cpu", step: int = 0) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`rank_seed` ``(seed, rank, step)``."""
    g = torch.Generator(device=device)
    g.manual_seed(rank_seed(seed, rank, step))
    return g
