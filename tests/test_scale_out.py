"""Scaling out: `experiment` under DDP reports once on rank 0, shards merge into the whole grid's
report, and ``jobs`` workers spread over the GPUs."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_ssl_backdoor.pipeline import distributed
from lightning_ssl_backdoor.pipeline.config import TrainerConfig
from lightning_ssl_backdoor.pipeline.experiment import Runner, config_from_dict

ROOT = Path(__file__).resolve().parents[1]

DDP = {
    "name": "ddp",
    "seeds": [0],
    "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 5, "batch_size": 8, "mu": 2,
             "eval_batch_size": 64},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": 0.9},
    "trainer": {"max_steps": 2, "val_check_interval": 2, "checkpoint_every_n_steps": 2, "accelerator": "cpu",
                "devices": 2, "strategy": "ddp"},
    "algorithms": [{"name": "fixmatch", "init_args": {"threshold": 0.5}}],
    "attacks": [{"name": "badnets", "init_args": {"target": 1, "budget": 3}}],
}


def test_experiment_under_ddp_reports_once_with_single_process_numbers(tmp_path):
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(DDP))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ssl_backdoor.cli", "experiment", "-c", str(cfg_path), "--output", str(out),
         "--no_progress", "true"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| algorithm |") == 1, proc.stdout  # one report, printed by rank 0 only
    assert proc.stderr.count("[1/1]") == 1
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["steps"] == 2 and row["asr"] is not None

    # the same weights evaluated by one process give the numbers of the report
    cfg = config_from_dict(DDP)
    runner = Runner(cfg, out, progress=False)
    algorithm, attack, _, seed = runner.rows()[0]
    split, _ = runner.attacked_split(seed, attack)  # cached by the DDP run
    (ckpt_dir,) = [p for p in (out / "cache").glob("train-*/checkpoints")]
    single_dir = tmp_path / "single"
    shutil.copytree(ckpt_dir, single_dir / "checkpoints")
    from lightning_ssl_backdoor.pipeline.training import train_row

    single_trainer = TrainerConfig(**{**DDP["trainer"], "devices": 1, "strategy": "auto"})
    res = train_row(split, algorithm, runner.model_args(seed), cfg.data, single_trainer, seed, single_dir,
                    enable_progress_bar=False)
    single = runner.make_row(algorithm, attack, None, seed, split, res, {}, "x")
    for key in ("clean_accuracy", "asr", "asr_conditioned", "clean_accuracy_raw", "asr_raw"):
        assert row[key] == single[key], key


def test_worker_gpu_is_slot_mod_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [distributed.worker_gpu(i) for i in range(5)] == ["0", "1", "2", "0", "1"]
    # the GPUs SLURM (or the user) made visible are the ones handed out
    assert [distributed.worker_gpu(i, 2, visible="4,6") for i in range(3)] == ["4", "6", "4"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert distributed.worker_gpu(0) is None


def test_pool_worker_takes_a_free_slot_and_its_gpu(monkeypatch):
    """The worker side of ``jobs`` > 1: slot i -> CUDA_VISIBLE_DEVICES = i mod N; slot freed after;
    without GPUs the environment is left alone."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots: queue.Queue = queue.Queue()
    for i in (3, 0):
        slots.put(i)
    monkeypatch.setattr(distributed, "_SLOTS", slots)
    monkeypatch.setattr(distributed, "_NUM_GPUS", 2)
    with distributed.gpu_slot() as gpu:
        assert gpu == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with distributed.gpu_slot() as gpu:
        assert gpu == "0"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert sorted(slots.get_nowait() for _ in range(2)) == [0, 3]
    monkeypatch.setattr(distributed, "_NUM_GPUS", 0)
    slots.put(1)
    with distributed.gpu_slot() as gpu:
        assert gpu is None and "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.parametrize("env,zero", [({}, True), ({"RANK": "1"}, False), ({"LOCAL_RANK": "0"}, True),
                                      ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
                                      ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, False),
                                      ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, True)])
def test_global_zero_from_launcher_variables(monkeypatch, env, zero):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.is_global_zero() is zero


@pytest.mark.parametrize("env,nodes", [({}, 1), ({"SLURM_NTASKS": "8", "SLURM_NNODES": "2"}, 2),
                                       ({"SLURM_NTASKS": "1", "SLURM_NNODES": "1"}, 1),
                                       ({"SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "interactive"}, 1),
                                       ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, 2)])
def test_num_nodes_from_the_launcher(monkeypatch, env, nodes):
    for key in ("SLURM_NTASKS", "SLURM_NNODES", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.launcher_num_nodes() == nodes


def test_jobs_with_ddp_is_refused(tmp_path):
    from lightning_ssl_backdoor.errors import ConfigError

    cfg = config_from_dict({**DDP, "jobs": 2})
    with pytest.raises(ConfigError, match="set jobs: 1"):
        Runner(cfg, tmp_path, progress=False).run()
