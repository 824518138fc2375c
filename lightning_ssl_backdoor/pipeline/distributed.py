"""Which process does what when an experiment scales out.

- :func:`is_global_zero`: under DDP (Lightning's own launcher, ``torchrun`` or SLURM with one task
  per GPU) every rank runs the experiment's rows together, but only global rank 0 prints the
  per-row summaries and writes the report and figures, so one report comes out, holding the
  metrics gathered over every rank (the same numbers a single process gets for those weights).
- :func:`worker_gpu`: with ``jobs`` > 1 on a machine with N visible GPUs, worker slot i trains on
  GPU i mod N (it sees only that GPU, as ``cuda:0``, through ``CUDA_VISIBLE_DEVICES``, so cache keys
  do not depend on the GPU); on a machine without GPUs nothing changes.
"""

from __future__ import annotations

import os
from typing import Optional

import torch


def global_rank() -> int:
    """This process's global rank: from the initialised process group, else from the variables the
    launchers set (``RANK`` from torchrun, ``NODE_RANK``/``LOCAL_RANK`` from Lightning's launcher,
    ``SLURM_PROCID`` in a SLURM job of several tasks); 0 for a plain single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "LOCAL_RANK" in env:
        local = int(env["LOCAL_RANK"])
        node = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
        return local if node == 0 else node * 1_000_000 + local  # any non-zero value on other nodes
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"])
    return 0


def is_global_zero() -> bool:
    return global_rank() == 0


def launcher_num_nodes() -> int:
    """The number of nodes of a multi-node launch (``Trainer(num_nodes=...)``, which Lightning checks
    against the launcher): ``SLURM_NNODES`` in a SLURM job of several tasks (one per GPU),
    ``WORLD_SIZE / LOCAL_WORLD_SIZE`` under torchrun; 1 otherwise. Taken from the launcher, so it
    is not part of a row's cache key."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_NNODES" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return int(env["SLURM_NNODES"])
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env and "TORCHELASTIC_RUN_ID" in env:
        return max(1, int(env["WORLD_SIZE"]) // max(1, int(env["LOCAL_WORLD_SIZE"])))
    return 1


def worker_gpu(slot: int, num_gpus: Optional[int] = None, visible: Optional[str] = None) -> Optional[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value for worker ``slot`` (GPU ``slot mod N``), or None without
    GPUs. ``visible``: the parent's ``CUDA_VISIBLE_DEVICES`` (e.g. set by SLURM), whose entries are
    the GPUs handed out; by default read from the environment."""
    n = torch.cuda.device_count() if num_gpus is None else num_gpus
    if n < 1:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n)]
    ids = ids[:n] or [str(i) for i in range(n)]
    return ids[slot % len(ids)]


# ------------------------------------------------ worker slots of a ``jobs`` > 1 pool
_SLOTS = None  # a multiprocessing queue of free slot numbers, set in each worker by the initializer
_NUM_GPUS = 0


def init_worker(slots, num_gpus: int) -> None:
    """Pool initializer: remember the queue of free slots and the parent's GPU count."""
    global _SLOTS, _NUM_GPUS
    _SLOTS, _NUM_GPUS = slots, num_gpus


class gpu_slot:
    """Context manager around one row in a pool worker: takes a free slot i, makes GPU i mod N the
    only visible one (before CUDA is initialised in this fresh process) and frees the slot after."""

    def __enter__(self) -> Optional[str]:
        self.slot = None if _SLOTS is None else _SLOTS.get()
        gpu = None if self.slot is None else worker_gpu(self.slot, _NUM_GPUS)
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        return gpu

    def __exit__(self, *exc) -> None:
        if self.slot is not None:
            _SLOTS.put(self.slot)
