"""Crash test: ``experiment`` killed with SIGKILL at five points, resumed each time, gives the same
results as an uninterrupted run (issue 17). The kills are deterministic (``faults.crash_point``,
``SSL_BACKDOOR_KILL_AT``) and happen in a subprocess: no ``finally`` runs, as in a power cut."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.io_lock import lock_path

ROOT = Path(__file__).resolve().parents[1]
CFG = {
    "name": "crash", "seeds": [0],
    "data": {"dataset": "digits", "image_size": 16, "labels_per_class": 2, "batch_size": 4, "mu": 1,
             "eval_batch_size": 500, "num_unlabeled": 60},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 4}, "ema_decay": 0.9},
    "trainer": {"max_steps": 4, "val_check_interval": 2, "checkpoint_every_n_steps": 1, "accelerator": "cpu"},
    "algorithms": [{"name": "fixmatch", "init_args": {"threshold": 0.5}}],
    "attacks": [{"name": "clean_label", "init_args": {"target": 1, "budget": 4}}],
}
# (crash point, what it interrupts); every run resumes the previous one's output folder
POINTS = [
    ("write:poisoned.npz", "poisoning: the artifact is written to its temporary file, not renamed"),
    ("train_step#1", "training: after step 1 (its checkpoint saved)"),
    ("checkpoint", "checkpoint writing: the step-2 checkpoint after torch.save, before fsync and rename"),
    ("validation", "validation: inside the validation at step 2"),
    ("write:results.md", "report writing: results.json written, results.md not"),
]


def _run(cfg: Path, out: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("SSL_BACKDOOR_KILL_AT", None)
    if kill_at:
        env["SSL_BACKDOOR_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "lightning_ssl_backdoor.cli", "experiment", "-c", str(cfg), "--output", str(out),
         "--no_progress", "true"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _rows(out: Path) -> list[dict]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    for r in rows:
        r.pop("fit_seconds")
    return rows


def test_experiment_killed_at_five_points_resumes_to_identical_results(tmp_path):
    cfg = tmp_path / "crash.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    ref = tmp_path / "ref"  # the uninterrupted run, in this process (one interpreter start less)
    assert main(["experiment", "-c", str(cfg), "--output", str(ref), "--no_progress", "true"]) == 0
    out = tmp_path / "run"
    for point, _what in POINTS:
        res = _run(cfg, out, point)
        assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr[-2000:])
        assert lock_path(out).exists()  # a dead run's lock stays ...
    res = _run(cfg, out, None)  # ... and the next run takes it over
    assert res.returncode == 0, res.stderr[-2000:]
    got, want = _rows(out), _rows(ref)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert (out / "results.md").read_text().split("package")[0] == (ref / "results.md").read_text().split("package")[0]
    assert not lock_path(out).exists()
    assert list(out.rglob("*.corrupt-*")) == []  # atomic writes: nothing was ever half-written
    assert list(out.rglob("*.tmp")) == []  # the killed writers' temporary files were cleaned up
