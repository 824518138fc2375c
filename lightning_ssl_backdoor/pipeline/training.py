"""One training row: build the SSL module, fit with resumable checkpoints, test, return metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from lightning_ssl_backdoor._lightning import pl
import torch
from lightning_ssl_backdoor._lightning import Callback, TQDMProgressBar
from lightning_ssl_backdoor._lightning import TensorBoardLogger
from safetensors.torch import load_file, save
from torch import nn

from lightning_ssl_backdoor.checkpoint_io import AtomicCheckpointIO, ValidatedCheckpoint, fit_resumable
from lightning_ssl_backdoor.data import SSLDataModule, SSLSplit
from lightning_ssl_backdoor.data.artifacts import atomic_write, atomic_write_json
from lightning_ssl_backdoor.data.cache_entry import is_history, is_row_result, read_json_entry
from lightning_ssl_backdoor.defenses.base import DefenseContext, TrainedModel
from lightning_ssl_backdoor.errors import ArtifactError
from lightning_ssl_backdoor.pipeline.distributed import launcher_num_nodes
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig
from lightning_ssl_backdoor.ssl import SSLModule, resolve_algorithm

__all__ = ["MetricHistory", "OptimizerLR", "SSLProgressBar", "evaluate_model", "load_trained", "resolve_algorithm", "train_row"]


#: the progress bar of a row redraws every this many steps (each redraw reads the shown values:
#: a host-device synchronisation on a GPU)
PROGRESS_REFRESH_STEPS = 20


class SSLProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn every ``refresh_rate`` steps, showing the module's
    ``bar_values`` (loss, mask rate) read only when it redraws: values logged with
    ``prog_bar=True`` would instead be turned into Python numbers after every step (a host-device
    synchronisation per step on a GPU; ``benchmarks/step_overhead.py`` counts them)."""

    reads_module_values = True

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        out = super().get_metrics(trainer, pl_module)
        for k, v in getattr(pl_module, "bar_values", {}).items():
            out[k] = f"{v.item():.3g}" if torch.is_tensor(v) else v
        return out


class OptimizerLR(Callback):
    """The learning rate, one TensorBoard curve per optimiser: ``lr-<class>`` (``lr-<class>-<i>``
    when two optimisers share a class), the first parameter group's rate, every
    ``log_every_n_steps`` steps. The parameter groups of one optimiser (weights with and without
    weight decay) follow one schedule, where Lightning's LearningRateMonitor draws a curve each."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not trainer.loggers or trainer.global_step % max(1, int(trainer.log_every_n_steps)):
            return
        kinds = [type(o).__name__ for o in trainer.optimizers]
        values = {f"lr-{k}" + (f"-{i}" if kinds.count(k) > 1 else ""): float(o.param_groups[0]["lr"])
                  for i, (k, o) in enumerate(zip(kinds, trainer.optimizers))}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)


class MetricHistory(Callback):
    """Records the validation metrics (CA / ASR, raw and EMA) after every validation, per step.

    The curve is written to ``path`` (atomically) after every validation, so a resumed run keeps
    the points of the interrupted one, including those measured after its last checkpoint.
    """

    def __init__(self, path: Optional[Path] = None) -> None:
        self.path = path
        self.history: list[dict[str, float]] = []
        if path is not None:
            self.history = read_json_entry(path, is_history) or []

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
    save_model: bool = False,
    tensorboard: Optional[tuple[Path, str]] = None,
) -> dict[str, Any]:
    """Fit ``algorithm`` on ``split`` in ``workdir`` (resuming from ``last.ckpt``), then test.

    Returns the test metrics of the last model (never selected on the test set), the validation
    history over steps and the wall-clock seconds. ``workdir/metrics.json`` marks completion. With
    ``save_model`` the final weights (raw and EMA) are kept in ``workdir/model.safetensors`` (the
    result's ``model_path``) for :func:`load_trained`. ``tensorboard``: (folder, run name) of the
    TensorBoard run (default ``workdir/tb``); the learning rate is logged there, one curve per
    optimiser (``lr-SGD``), and no placeholder ``hp_metric``.
    """
    done = workdir / "metrics.json"
    cached = read_json_entry(done, is_row_result)  # a damaged entry is set aside and the row rebuilt
    if cached is not None:
        return cached
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = _datamodule(split, data, seed, resolve_algorithm(algorithm.name))
    module = _build_module(dm, algorithm, model_args)
    ckpt_dir = workdir / "checkpoints"
    history = MetricHistory(workdir / "history.json")
    checkpoint = ValidatedCheckpoint(  # at a validation step, saved after the validation
        dirpath=ckpt_dir,
        filename="step{step}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=trainer_cfg.checkpoint_every_n_steps,
    )
    tb_dir, tb_name = tensorboard or (workdir, "tb")
    trainer = pl.Trainer(
        max_steps=trainer_cfg.max_steps,
        val_check_interval=trainer_cfg.val_check_interval,
        check_val_every_n_epoch=None,
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=launcher_num_nodes(),
        strategy=trainer_cfg.strategy,
        precision=trainer_cfg.precision,
        sync_batchnorm=trainer_cfg.sync_batchnorm,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        logger=TensorBoardLogger(str(tb_dir), name=tb_name, version="" if tensorboard else 0, default_hp_metric=False),
        callbacks=[checkpoint, history, OptimizerLR()] + list(extra_callbacks or [])
        + ([SSLProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS)] if enable_progress_bar else []),
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(workdir),
        plugins=[AtomicCheckpointIO()],
    )
    t0 = time.perf_counter()
    fit_resumable(trainer, module, dm, ckpt_dir)  # resumes from the newest complete checkpoint
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
    if save_model:
        result["model_path"] = str(workdir / MODEL_FILE)
    if trainer.is_global_zero:
        if save_model:
            _save_weights(module, workdir / MODEL_FILE)
        atomic_write_json(done, result)
    return result


MODEL_FILE = "model.safetensors"


def _datamodule(split: SSLSplit, data: DataConfig, seed: int, cls: Optional[type] = None) -> SSLDataModule:
    """The row's data module: :class:`SSLDataModule`, or the ``datamodule_class`` an algorithm names
    (a subclass whose training loader the algorithm needs, e.g. DBD fine-tuning's draws)."""
    return getattr(cls, "datamodule_class", SSLDataModule)(**vars(data), seed=seed, split=split)


def _build_module(dm: SSLDataModule, algorithm: Spec, model_args: dict) -> SSLModule:
    cls = resolve_algorithm(algorithm.name)
    return cls(num_classes=dm.num_classes, in_channels=dm.in_channels, **{**model_args, **algorithm.init_args})


def _save_weights(module: SSLModule, path: Path) -> None:
    """The classifier's final weights, ``raw.*`` and (when kept) ``ema.*``, as safetensors."""
    state = {f"raw.{k}": v.detach().cpu().contiguous() for k, v in module.model.state_dict().items()}
    if module.ema_model is not None:
        state.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in module.ema_model.state_dict().items()})
    atomic_write(path, lambda fh: fh.write(save(state)))


def load_trained(result: dict[str, Any], ctx: DefenseContext) -> TrainedModel:
    """The classifiers a ``train_row(..., save_model=True)`` result kept (a defense's ``ctx.load_model``)."""
    path = Path(result.get("model_path") or "")
    if not path.is_file():
        raise ArtifactError(f"no trained weights at {path}; train with save_model=True (ctx.train(..., save_model=True)).")
    module = _build_module(_datamodule(ctx.split, ctx.data, ctx.seed), ctx.algorithm, ctx.model_args)
    state = load_file(str(path))
    module.model.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("raw.")})
    if module.ema_model is not None and any(k.startswith("ema.") for k in state):
        module.ema_model.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ema.")})
        for p in module.ema_model.parameters():
            p.requires_grad_(True)
        return TrainedModel(module.model.eval(), module.ema_model.eval())
    return TrainedModel(module.model.eval(), None)


def evaluate_model(model: nn.Module, ctx: DefenseContext) -> dict[str, float]:
    """Test metrics of ``model`` on the row's test set and trigger, exactly as :func:`train_row`
    reports them (``acc``, ``asr``, ``asr_cond``, ``targeted``; one model, so no ``_ema`` keys)."""
    dm = _datamodule(ctx.split, ctx.data, ctx.seed)
    module = _build_module(dm, ctx.algorithm, {**ctx.model_args, "init_weights": None})
    module.model, module.ema_model = model, None
    tc = ctx.trainer
    trainer = pl.Trainer(
        accelerator=tc.accelerator, devices=1, precision=tc.precision, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(ctx.stage_dir),
    )
    tested = trainer.test(module, datamodule=dm, verbose=False)[0]
    return {k.split("/", 1)[1]: float(v) for k, v in tested.items() if k.startswith("test/")}
