"""One training row: build the SSL module, fit with resumable checkpoints, test, return metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from lightning_ssl_backdoor._lightning import pl
import torch
from lightning_ssl_backdoor._lightning import Callback, ModelCheckpoint

from lightning_ssl_backdoor.data import SSLDataModule, SSLSplit
from lightning_ssl_backdoor.data.artifacts import atomic_write_json
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.config import DataConfig, Spec, TrainerConfig


def resolve_algorithm(name: str):
    """An algorithm name from ``ssl.ALGORITHMS`` or a dotted class path."""
    from lightning_ssl_backdoor import ssl

    if name in ssl.ALGORITHMS:
        return ssl.ALGORITHMS[name]
    if "." in name:
        import importlib

        mod, _, cls = name.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError):
            raise ConfigError(f"cannot import algorithm class {name!r}.") from None
    raise ConfigError(
        f"unknown algorithm {name!r}; choose one of {sorted(ssl.ALGORITHMS)} or give a class path."
    )


class MetricHistory(Callback):
    """Records the validation metrics (CA / ASR, raw and EMA) after every validation, per step.

    The curve is written to ``path`` (atomically) after every validation, so a resumed run keeps
    the points of the interrupted one, including those measured after its last checkpoint.
    """

    def __init__(self, path: Optional[Path] = None) -> None:
        self.path = path
        self.history: list[dict[str, float]] = []
        if path is not None and path.is_file():
            self.history = json.loads(path.read_text())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"step": int(trainer.global_step)}
        for k, v in trainer.callback_metrics.items():
            if k.startswith("val/"):
                row[k[4:]] = float(v)
            elif k.startswith("backdoor/"):
                row[k] = float(v)
        self.history = [h for h in self.history if h["step"] != row["step"]] + [row]
        if self.path is not None and trainer.is_global_zero:
            atomic_write_json(self.path, self.history)


def train_row(
    split: SSLSplit,
    algorithm: Spec,
    model_args: dict,
    data: DataConfig,
    trainer_cfg: TrainerConfig,
    seed: int,
    workdir: Path,
    enable_progress_bar: bool = True,
    extra_callbacks: Optional[list[Callback]] = None,
) -> dict[str, Any]:
    """Fit ``algorithm`` on ``split`` in ``workdir`` (resuming from ``last.ckpt``), then test.

    Returns the test metrics of the last model (never selected on the test set), the validation
    history over steps and the wall-clock seconds. ``workdir/metrics.json`` marks completion.
    """
    done = workdir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = SSLDataModule(
        **{k: v for k, v in vars(data).items()},
        seed=seed,
        split=split,
    )
    cls = resolve_algorithm(algorithm.name)
    kwargs = {**model_args, **algorithm.init_args}
    module = cls(num_classes=dm.num_classes, in_channels=dm.in_channels, **kwargs)
    ckpt_dir = workdir / "checkpoints"
    history = MetricHistory(workdir / "history.json")
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step{step}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=trainer_cfg.checkpoint_every_n_steps,
    )
    from lightning_ssl_backdoor._lightning import TensorBoardLogger

    trainer = pl.Trainer(
        max_steps=trainer_cfg.max_steps,
        val_check_interval=trainer_cfg.val_check_interval,
        check_val_every_n_epoch=None,
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        strategy=trainer_cfg.strategy,
        precision=trainer_cfg.precision,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        logger=TensorBoardLogger(str(workdir), name="tb", version=0),
        callbacks=[checkpoint, history] + list(extra_callbacks or []),
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(workdir),
    )
    last = ckpt_dir / "last.ckpt"
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
    fit_seconds = time.perf_counter() - t0
    tested = trainer.test(module, datamodule=dm, verbose=False)[0]
    metrics = {k.split("/", 1)[1]: float(v) for k, v in tested.items() if k.startswith("test/")}
    result = {
        "test": metrics,
        "history": history.history,
        "fit_seconds": fit_seconds,
        "steps": int(trainer.global_step),
        "has_ema": module.ema_model is not None,
    }
    if trainer.is_global_zero:
        atomic_write_json(done, result)
    return result
