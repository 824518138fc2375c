"""SIGTERM behaves like Ctrl-C (issue 34): one job saves a resume point and exits 143; with two
jobs the workers stop, their locks are released and nothing half-written stays; a job started in
the background (SIGINT ignored) still stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lightning_ssl_backdoor.cli import main
from tests.test_harden import ROOT, SMALL, SigintAt, _cfg


class _SigtermAt(SigintAt):
    """Sends this process SIGTERM at the end of training step ``step``."""

    signum = signal.SIGTERM


def test_sigterm_with_one_job_saves_a_resume_point_and_exits_143(tmp_path, capsys, monkeypatch):
    from lightning_ssl_backdoor import faults
    from lightning_ssl_backdoor.io_lock import lock_path

    out = tmp_path / "o"
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(faults, "training_hooks", lambda: [_SigtermAt(1)])
    cfg = _cfg(tmp_path, trainer={**SMALL["trainer"], "max_steps": 4})
    assert main(["experiment", "-c", cfg, "--output", str(out), "--no_progress", "true"]) == 143
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith("terminated (SIGTERM):") and "again to resume" in err[-1]
    assert torch.load(next(out.glob("cache/train-*/checkpoints/last.ckpt")), weights_only=True)["global_step"] == 1
    assert not lock_path(out).exists() and signal.getsignal(signal.SIGTERM) == before


def test_sigterm_with_two_jobs_stops_workers_releases_locks_and_exits_143(tmp_path):
    cfg = _cfg(tmp_path, seeds=[0, 1], jobs=2, threads=1,
               trainer={**SMALL["trainer"], "max_steps": 100_000, "val_check_interval": 50_000})
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "lightning_ssl_backdoor.cli", "experiment", "-c", cfg, "--output",
                             str(out), "--no_progress", "true"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline, pids = time.monotonic() + 240, []
        while time.monotonic() < deadline and proc.poll() is None:  # both workers in their row's training
            locks = list(out.glob("cache/train-*/.lock"))
            try:
                pids = [json.loads(p.read_text())["pid"] for p in locks] if len(locks) == 2 else []
            except (OSError, ValueError):  # a lock file being written this instant
                pids = []
            if pids:
                break
            time.sleep(0.2)
        assert len(pids) == 2, proc.stderr.read() if proc.poll() is not None else "workers did not start"
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-1].startswith("terminated (SIGTERM):") and "again to resume" in lines[-1]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list(out.rglob(".lock")) and not list(out.rglob("*.tmp"))


def test_sigterm_in_a_background_job_with_sigint_ignored_acts_like_ctrl_c():
    """A job started in the background by a non-interactive shell (`cmd &`) has SIGINT ignored from
    the start; SIGTERM must still interrupt it (the parent of `--jobs 2` waits in the pool there)."""
    from lightning_ssl_backdoor import termination

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            with termination.handled():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs between bytecodes: never reached
        assert termination.received()
    finally:
        signal.signal(signal.SIGINT, previous)
