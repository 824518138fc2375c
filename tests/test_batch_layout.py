"""The batch layout of ssl/base.py: what SSLDataModule yields passes, anything else is refused in one
sentence that names the layout and SSLDataModule."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ssl_backdoor._lightning import pl
from lightning_ssl_backdoor.data import SSLDataModule, make_split
from lightning_ssl_backdoor.errors import DataFormatError
from lightning_ssl_backdoor.ssl import FixMatch
from lightning_ssl_backdoor.ssl.base import check_batch_layout
from tests.conftest import random_imageset


@pytest.fixture
def dm():
    split = make_split(random_imageset(48, seed=0), random_imageset(12, seed=1), labels_per_class=4, seed=0)
    return SSLDataModule(split=split, batch_size=4, mu=2, eval_batch_size=6)


def test_datamodule_batches_have_the_documented_layout(dm):
    train = next(iter(dm.train_dataloader()))
    check_batch_layout(train)
    lab, unl = train["labeled"], train["unlabeled"]
    assert lab["x"].dtype == torch.uint8 and lab["x"].shape == (4, 3, 8, 8)
    assert lab["y"].dtype == torch.int64 and lab["idx"].dtype == torch.int64 and lab["y"].shape == (4,)
    assert unl["x"].shape == (8, 3, 8, 8) and unl["idx"].dtype == torch.int64 and "y" not in unl
    dm.setup("validate")
    val = next(iter(dm.val_dataloader()))
    check_batch_layout(val)
    assert set(val) == {"x", "y", "idx"} and val["x"].dtype == torch.uint8


def test_tuple_loader_gets_one_sentence(tmp_path):
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(x, torch.arange(16) % 3), batch_size=4)
    m = FixMatch(arch="tiny_cnn", model_kwargs={"width": 4}, num_classes=3, weak_pad=1)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(DataFormatError) as info:
        trainer.fit(m, train_dataloaders=loader)
    msg = str(info.value)
    assert "the batch is a list of 2 items" in msg and "SSLDataModule" in msg and "'labeled'" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence


@pytest.mark.parametrize("batch, problem", [
    ({"labeled": {"x": torch.rand(2, 3, 4, 4), "y": torch.zeros(2, dtype=torch.long), "idx": torch.arange(2)}},
     "batch['labeled']['x'] is a torch.float32 tensor"),
    ({"labeled": {"x": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.long)}},
     "batch['labeled'] lacks 'idx'"),
    ({"labeled": {"x": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "y": torch.zeros(2), "idx": torch.arange(2)}},
     "batch['labeled']['y'] is a torch.float32 tensor"),
    ({"labeled": {"x": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.long),
                  "idx": torch.arange(2)}, "unlabeled": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)},
     "batch['unlabeled'] is a torch.uint8 tensor"),
    ({"image": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "label": torch.zeros(2, dtype=torch.long)},
     "the batch lacks 'x', 'y'"),
    (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "the batch is a torch.uint8 tensor"),
])
def test_layout_problems_are_named(batch, problem):
    with pytest.raises(DataFormatError, match="SSLDataModule") as info:
        check_batch_layout(batch)
    assert problem in str(info.value)
