"""The Lightning namespace the package builds on: ``lightning.pytorch`` or ``pytorch_lightning``.

Lightning ships the same trainer under two package names, and their classes are distinct: a
``pytorch_lightning.LightningModule`` is not a ``lightning.pytorch.LightningModule``, so
``lightning.Trainer().fit(module)`` refuses a module built on the other namespace. Every Lightning
import of this package goes through this file, which picks one namespace once (the first time a
module of the package that needs Lightning is imported) by this rule:

1. the environment variable ``SSL_BACKDOOR_LIGHTNING`` (``lightning`` or ``pytorch_lightning``)
   forces it;
2. otherwise, if the importing program already imported ``lightning`` (``"lightning"`` is in
   ``sys.modules``), ``lightning.pytorch`` -- so ``import lightning`` before
   ``import lightning_ssl_backdoor`` is enough in a project on the unified package;
3. otherwise ``pytorch_lightning`` when it is installed;
4. otherwise ``lightning.pytorch``.

:data:`NAMESPACE` holds the name picked and :data:`pl` the namespace module itself; the classes
the package uses are re-exported here (``LightningCLI``, the loggers and ``CheckpointIO`` on first
use, since they import more).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from lightning_ssl_backdoor.errors import ConfigError

ENV_VAR = "SSL_BACKDOOR_LIGHTNING"
#: choices of ``SSL_BACKDOOR_LIGHTNING`` -> the module holding the trainer
NAMESPACES = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}


def _installed(package: str) -> bool:
    return package in sys.modules or importlib.util.find_spec(package) is not None


def choose_namespace() -> str:
    """``"lightning"`` or ``"pytorch_lightning"`` by the rule of the module docstring."""
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced:
        if forced not in NAMESPACES:
            raise ConfigError(
                f"{ENV_VAR}={forced!r} is not a Lightning namespace: set it to 'lightning' or "
                "'pytorch_lightning', or unset it to pick the one your project imported."
            )
        if not _installed(forced):
            raise ConfigError(
                f"{ENV_VAR}={forced} but the {forced} package is not installed: pip install it "
                "or unset the variable."
            )
        return forced
    if "lightning" in sys.modules:
        return "lightning"
    if _installed("pytorch_lightning"):
        return "pytorch_lightning"
    if _installed("lightning"):
        return "lightning"
    raise ConfigError("neither lightning nor pytorch_lightning is installed: pip install one of them.")


NAMESPACE: str = choose_namespace()
#: the namespace module (``lightning.pytorch`` or ``pytorch_lightning``), used as ``pl.Trainer`` etc.
pl: ModuleType = importlib.import_module(NAMESPACES[NAMESPACE])

LightningModule = pl.LightningModule
LightningDataModule = pl.LightningDataModule
Trainer = pl.Trainer
Callback = pl.Callback
seed_everything = pl.seed_everything
ModelCheckpoint = pl.callbacks.ModelCheckpoint
LearningRateMonitor = pl.callbacks.LearningRateMonitor
TQDMProgressBar = pl.callbacks.TQDMProgressBar

# imported on first use: the CLI pulls in jsonargparse, the loggers their writers
_LAZY = {
    "LightningCLI": ("cli", "LightningCLI"),
    "TensorBoardLogger": ("loggers", "TensorBoardLogger"),
    "CSVLogger": ("loggers", "CSVLogger"),
    "CheckpointIO": ("plugins", "CheckpointIO"),
    "TorchCheckpointIO": ("plugins", "TorchCheckpointIO"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        sub, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{pl.__name__}.{sub}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CSVLogger",
    "Callback",
    "CheckpointIO",
    "ENV_VAR",
    "LightningCLI",
    "LightningDataModule",
    "LearningRateMonitor",
    "LightningModule",
    "ModelCheckpoint",
    "NAMESPACE",
    "NAMESPACES",
    "TQDMProgressBar",
    "TorchCheckpointIO",
    "TensorBoardLogger",
    "Trainer",
    "choose_namespace",
    "pl",
    "seed_everything",
]
