"""Scale from day one: DDP on gloo, bf16-mixed, channels_last, and resuming an interrupted fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lightning_ssl_backdoor._lightning import pl
import pytest
import torch
from lightning_ssl_backdoor._lightning import Callback, ModelCheckpoint

from tests.ddp_worker import build, trainer

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    pl.seed_everything(0)
    dm, model = build()
    t = trainer(1, str(tmp_path), max_steps=3, val_check_interval=3, check_val_every_n_epoch=None)
    t.fit(model, datamodule=dm)
    ckpt = tmp_path / "m.ckpt"
    t.save_checkpoint(ckpt)
    dm, model = build()
    single = trainer(1, str(tmp_path)).test(model, datamodule=dm, ckpt_path=str(ckpt), verbose=False)[0]
    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests/ddp_worker.py"), str(ckpt), str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2
    assert set(ddp["metrics"]) == set(single)
    for k, v in single.items():
        assert ddp["metrics"][k] == pytest.approx(v, abs=1e-7), k
    assert {"test/acc", "test/asr", "test/asr_cond", "test/acc_ema"} <= set(single)


@pytest.mark.parametrize("precision,channels_last", [("bf16-mixed", False), ("32-true", True)])
def test_precision_and_channels_last(tmp_path, precision, channels_last):
    pl.seed_everything(0)
    dm, _ = build()
    from lightning_ssl_backdoor.ssl import FixMatch

    model = FixMatch(arch="tiny_cnn", num_classes=10, in_channels=3, weak_pad=1, model_kwargs={"width": 8},
                     channels_last=channels_last)
    t = trainer(1, str(tmp_path), max_steps=2, val_check_interval=2, check_val_every_n_epoch=None, precision=precision)
    t.fit(model, datamodule=dm)
    res = t.test(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= res["test/acc"] <= 1.0 and t.global_step == 2


class Interrupt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def _fit(root: Path, steps: int, callbacks, ckpt_path=None):
    pl.seed_everything(0)
    dm, model = build()
    ck = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=2)
    t = trainer(1, str(root), max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None,
                callbacks=[ck] + callbacks, enable_checkpointing=True)
    t.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return t, model


def test_resume_after_interruption_finishes_identically(tmp_path):
    _, full = _fit(tmp_path / "a", 6, [])
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "b", 6, [Interrupt(at=5)])
    last = tmp_path / "b" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=True)["global_step"] == 4
    t, resumed = _fit(tmp_path / "b", 6, [], ckpt_path=str(last))
    assert t.global_step == 6
    for (n, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n
