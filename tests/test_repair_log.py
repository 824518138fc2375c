"""``sgd_train`` loops (the model repairs FT, FP, NAD, ABL, MCR, Neural Cleanse) log nothing and
make no writer outside a defense row, log sparse steps inside one, and never reuse a run name
(the runs of a real experiment: tests/test_tensorboard_defense_runs.py)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_ssl_backdoor.defenses.baselines._common import sgd_train
from lightning_ssl_backdoor.defenses.repair_log import repair_logging, step_logger
from tests.test_tensorboard_defense_runs import scalars


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


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
    first, second = scalars(tmp_path / "row/seed0/demo-sgd"), scalars(tmp_path / "row/seed0/demo-sgd-2")
    # every max(1, 250 // 100) = 2nd step and the last: the loss is read from the device 126 times, not 250
    assert [s for s, _ in first["train/loss"]] == list(range(0, 250, 2)) + [249]
    assert [s for s, _ in second["lr"]] == [0, 1, 2, 3, 4]
    assert step_logger("sgd", 10) is None  # the block closed
