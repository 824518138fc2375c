"""Run by tests/test_scale.py in a subprocess: DDP on 2 CPU processes (gloo).

Fits a tiny FixMatch for 2 steps under DDP, then evaluates a given checkpoint on the test set and
writes the test metrics (rank 0) to a JSON file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lightning_ssl_backdoor._lightning import pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import AddSquare  # noqa: E402
from lightning_ssl_backdoor.data import PoisonedSplit, SSLDataModule, make_split  # noqa: E402
from lightning_ssl_backdoor.data.readers import read_digits  # noqa: E402
from lightning_ssl_backdoor.ssl import FixMatch  # noqa: E402
from lightning_ssl_backdoor.utils import quiet_lightning  # noqa: E402


def build(eval_batch_size: int = 64):
    split = make_split(read_digits("train", image_size=8), read_digits("test", image_size=8), labels_per_class=5, seed=0)
    split = PoisonedSplit(**vars(split), trigger=AddSquare(), target=2)
    dm = SSLDataModule(split=split, batch_size=8, mu=2, eval_batch_size=eval_batch_size)
    model = FixMatch(arch="tiny_cnn", num_classes=10, in_channels=3, weak_pad=1, model_kwargs={"width": 8})
    return dm, model


def trainer(devices: int, root: str, **kw) -> pl.Trainer:
    args = dict(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=root,
    )
    return pl.Trainer(**{**args, **kw})


if __name__ == "__main__":
    quiet_lightning()
    ckpt, out = sys.argv[1], sys.argv[2]
    pl.seed_everything(0)
    dm, model = build()
    t = trainer(2, str(Path(out).parent), max_steps=2, val_check_interval=2, check_val_every_n_epoch=None)
    t.fit(model, datamodule=dm)
    dm, model = build()
    t = trainer(2, str(Path(out).parent))
    res = t.test(model, datamodule=dm, ckpt_path=ckpt, verbose=False)[0]
    if t.is_global_zero:
        Path(out).write_text(json.dumps({"metrics": res, "world_size": t.world_size, "fit_steps_ok": True}))
