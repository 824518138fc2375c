"""Model repairs trained in plain torch loops (``sgd_train``: FT, FP, NAD, ABL, MCR, Neural
Cleanse) log their loss and learning rate to the row's TensorBoard, one run per loop, and log
nothing (make no writer) when called outside a defense row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.defenses.baselines._common import sgd_train
from lightning_ssl_backdoor.defenses.repair_log import repair_logging, step_logger

TINY = {
    "name": "repairs", "seeds": [0],
    "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 3, "batch_size": 8, "mu": 1,
             "eval_batch_size": 500},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": None},
    "trainer": {"max_steps": 2, "val_check_interval": 2, "checkpoint_every_n_steps": 2, "accelerator": "cpu"},
    "algorithms": ["supervised"],
    "attacks": [{"name": "badnets", "init_args": {"target": 1, "budget": 3}}],
    "defenses": [{"name": "ft", "init_args": {"epochs": 2, "batch_size": 8}},
                 {"name": "nad", "init_args": {"teacher_epochs": 1, "epochs": 1, "batch_size": 8}}],
}


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def test_repair_loops_log_loss_and_lr_under_the_rows_run(tmp_path):
    cfg = tmp_path / "repairs.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(cfg), "--output", str(out), "--no_progress", "true"]) == 0
    tb = out / "tensorboard"
    runs = sorted({p.relative_to(tb).parent.as_posix() for p in tb.rglob("events.out.tfevents.*")})
    ft_row, nad_row = "supervised__badnets__ft/seed0", "supervised__badnets__nad/seed0"
    assert f"{ft_row}/ft-finetune" in runs
    assert f"{nad_row}/nad-teacher" in runs and f"{nad_row}/nad-student" in runs
    curves = _scalars(tb / ft_row / "ft-finetune")
    assert set(curves) == {"train/loss", "lr"}
    assert curves["lr"][0] == (0, pytest.approx(0.01))  # FT's lr, decayed by the cosine afterwards
    assert all(torch.isfinite(torch.tensor(v)) for _, v in curves["train/loss"])


def test_nothing_is_logged_outside_a_defense_row(tmp_path, monkeypatch):
    made = []
    import torch.utils.tensorboard as tbmod

    monkeypatch.setattr(tbmod, "SummaryWriter", lambda *a, **k: made.append(a) or None)
    assert step_logger("sgd", 10) is None
    x, y = torch.rand(16, 3, 4, 4), torch.randint(0, 2, (16,))
    sgd_train(_tiny_model(), x, y, steps=3, lr=0.1, batch_size=8, augment=False)
    assert made == []


def test_logged_steps_are_sparse_and_names_do_not_collide(tmp_path):
    x, y = torch.rand(16, 3, 4, 4), torch.randint(0, 2, (16,))
    with repair_logging((tmp_path, "row/seed0"), "demo"):
        sgd_train(_tiny_model(), x, y, steps=250, lr=0.1, batch_size=8, augment=False)
        sgd_train(_tiny_model(), x, y, steps=5, lr=0.1, batch_size=8, augment=False)
    first, second = _scalars(tmp_path / "row/seed0/demo-sgd"), _scalars(tmp_path / "row/seed0/demo-sgd-2")
    # every max(1, 250 // 100) = 2nd step and the last: the loss is read from the device 126 times, not 250
    assert [s for s, _ in first["train/loss"]] == list(range(0, 250, 2)) + [249]
    assert [s for s, _ in second["lr"]] == [0, 1, 2, 3, 4]
    assert step_logger("sgd", 10) is None  # the block closed
