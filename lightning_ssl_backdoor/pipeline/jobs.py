"""How the experiment runner spreads rows over processes and reports each finished row.

``jobs`` > 1 trains rows side by side in ``spawn`` worker processes (one row per process, GPU
``slot mod N`` where the machine has N GPUs); each finished row prints one console line
(:func:`summary`). The shared stages (attacks, surrogates, the probe's perturbations) run once in
the parent before any worker starts, so workers only read them from the cache.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from lightning_ssl_backdoor.pipeline.config import ExperimentConfig, TrainerConfig
from lightning_ssl_backdoor.pipeline.distributed import gpu_slot, init_worker
from lightning_ssl_backdoor.pipeline.probe_stage import probe_set
from lightning_ssl_backdoor.termination import install_worker
from lightning_ssl_backdoor.utils import quiet_lightning

__all__ = ["pct", "row_task", "run_parallel", "summary", "uses_ddp"]


def run_parallel(runner, rows, chosen: list[int]) -> list[dict[str, Any]]:
    """Attacks and surrogates first (in this process, each once), then ``runner.cfg.jobs`` worker
    processes train the rows; results come back in row order. An interruption (Ctrl-C) or a failed
    row terminates the workers at once; finished rows and checkpoints stay cached, so re-running
    resumes."""
    cfg = runner.cfg
    for i in chosen:  # the shared stages, computed once before any row trains
        algorithm, attack, defense, seed = rows[i]
        runner.attacked_split(seed, attack)
        runner.model_args(seed)
        if cfg.probe and defense is None:
            probe_set(runner, seed)
    results: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(chosen), desc=f"experiment rows ({cfg.jobs} at a time)",
               disable=not runner.progress, file=sys.stderr)
    # defended rows (usually the longest) start first, so the workers tend to finish together
    order = sorted(chosen, key=lambda i: (rows[i][2] is None, rows[i][1] is None))
    ctx = mp.get_context("spawn")
    jobs = min(cfg.jobs, len(chosen))
    slots = ctx.Queue()  # worker slot i trains on GPU i mod N (distributed.worker_gpu)
    for slot in range(jobs):
        slots.put(slot)
    pool = ctx.Pool(jobs, initializer=init_worker, initargs=(slots, torch.cuda.device_count()),
                    maxtasksperchild=1)
    try:
        tasks = [(type(runner), cfg, str(runner.output), i) for i in order]
        for i, row, seconds in pool.imap_unordered(row_task, tasks):
            results[i] = row
            bar.update(1)
            summary(i, len(rows), row, seconds)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        bar.close()
    return [results[i] for i in chosen]


def row_task(task: tuple[type, ExperimentConfig, str, int]) -> tuple[int, dict[str, Any], float]:
    """One row in a worker process (``jobs`` > 1): no inner progress bar, ``cfg.threads`` threads,
    GPU ``slot mod N`` when the machine has N GPUs. The task names the runner's class (pickled by
    reference), so this module never imports the runner that imports it."""
    Runner, cfg, output, index = task
    install_worker()  # SIGTERM (the parent terminating the pool): release this worker's locks, exit 143
    quiet_lightning()
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "GPU available: ..." once per row is noise
    torch.set_num_threads(int(cfg.threads or 1))
    with gpu_slot():
        runner = Runner(cfg, Path(output), progress=False)
        t0 = time.perf_counter()
        row = runner.run_row(*runner.rows()[index])
    return index, row, time.perf_counter() - t0


def summary(i: int, n: int, row: dict[str, Any], seconds: float) -> None:
    """The console line of a finished row, in the names the result table uses (an absent attack or
    defense is "none")."""
    tqdm.write(
        f"[{i + 1}/{n}] {row['algorithm']} | attack={row['attack'] or 'none'} | defense={row['defense'] or 'none'} | "
        f"seed={row['seed']}: CA {pct(row['clean_accuracy'])}  ASR {pct(row['asr'])}  "
        f"ASR cond. {pct(row.get('asr_conditioned'))}  ({seconds:.0f} s)",
        file=sys.stderr,
    )


def uses_ddp(t: TrainerConfig) -> bool:
    """Whether a row trains over several processes: a ddp strategy, or several devices."""
    d = t.devices
    several = (len(d) > 1 if isinstance(d, (list, tuple)) else
               str(d).strip() == "-1" or (str(d).strip().isdigit() and int(str(d)) > 1))
    return "ddp" in str(t.strategy) or several


def pct(value: Optional[float]) -> str:
    """A percentage for the console: "n/a" where the row has none (ASR of a clean row)."""
    return "n/a" if value is None else f"{value}%"
