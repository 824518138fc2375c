"""The defense stage of the runner: a :class:`~lightning_ssl_backdoor.defenses.base.DefenseContext`
wired to the runner's training, model loading and evaluation calls.

The defense interface and the registry live below the runner, in
:mod:`lightning_ssl_backdoor.defenses.base`; this module only fills in the calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.defenses import DefenseContext
from lightning_ssl_backdoor.pipeline.training import evaluate_model, load_trained, train_row
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig


def defense_context(
    split: SSLSplit,
    seed: int,
    algorithm: Spec,
    model_args: dict,
    data: DataConfig,
    trainer: TrainerConfig,
    stage_dir: Path,
    progress: bool = True,
    trainer_fn: Optional[Callable[..., dict]] = None,
    undefended_dir: Optional[Path] = None,
    tensorboard: Optional[tuple[Path, str]] = None,
) -> DefenseContext:
    """The context the runner hands a defense (``trainer_fn`` replaces ``train_row``, for tests;
    ``undefended_dir``: the undefended row's training folder, shared by its model repairs;
    ``tensorboard``: the row's TensorBoard (folder, run name), for models trained outside ``train_fn``)."""
    return DefenseContext(
        split=split, seed=seed, algorithm=algorithm, model_args=model_args, data=data, trainer=trainer,
        stage_dir=Path(stage_dir), progress=progress, train_fn=trainer_fn or train_row,
        load_fn=load_trained, evaluate_fn=evaluate_model,
        undefended_dir=None if undefended_dir is None else Path(undefended_dir), tensorboard=tensorboard,
    )
