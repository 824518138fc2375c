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

The other order cannot work (a class's Lightning base is fixed when it is defined), so it is
named: when the rule picked a namespace by itself (no ``SSL_BACKDOOR_LIGHTNING``) and the program
imports the other one afterwards, a :class:`LightningNamespaceWarning` says once, in one sentence,
that the other trainer will refuse the package's modules and what to do (a ``sys.meta_path``
watcher, :class:`_LateImportWatcher`, that only looks at the import's name). On the command line,
a ``class_path`` whose class comes from the other namespace gets a sentence naming it and the fix
(:func:`foreign_class_sentence`, called by the error boundary).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any, Optional

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


class LightningNamespaceWarning(UserWarning):
    """The program imported the Lightning namespace the package did not pick (see the module docstring)."""


def _other(namespace: str) -> str:
    return next(n for n in NAMESPACES if n != namespace)


def late_import_sentence(namespace: str = NAMESPACE) -> str:
    """What to do when the program imports the other namespace after the package picked ``namespace``."""
    other = _other(namespace)
    if namespace == "pytorch_lightning":
        order = "import lightning before lightning_ssl_backdoor"
    else:
        order = "import lightning_ssl_backdoor before lightning and pytorch_lightning"
    return (f"lightning_ssl_backdoor built its modules on {namespace} (picked when it was imported), so "
            f"{other}.Trainer will refuse them (\"model must be a LightningModule\"): {order}, or set "
            f"{ENV_VAR}={other} before starting Python, or train with {namespace}.Trainer.")


class _LateImportWatcher:
    """A ``sys.meta_path`` entry that finds nothing: the first import of ``watched`` warns once
    (:class:`LightningNamespaceWarning`, :func:`late_import_sentence`) and removes the watcher."""

    def __init__(self, watched: str) -> None:
        self.watched = watched

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == self.watched:
            self.remove()
            warnings.warn(late_import_sentence(), LightningNamespaceWarning, stacklevel=2)
        return None

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _watch_the_other_namespace() -> Optional[_LateImportWatcher]:
    """Install the watcher when the rule picked :data:`NAMESPACE` by itself and the other namespace
    is installed and not imported yet (a forced ``SSL_BACKDOOR_LIGHTNING`` is a decision: no watcher)."""
    other = _other(NAMESPACE)
    if os.environ.get(ENV_VAR, "").strip() or other in sys.modules or importlib.util.find_spec(other) is None:
        return None
    watcher = _LateImportWatcher(other)
    sys.meta_path.insert(0, watcher)
    return watcher


WATCHER: Optional[_LateImportWatcher] = _watch_the_other_namespace()


def foreign_base(cls: Any) -> Optional[type]:
    """The first class in ``cls``'s MRO that belongs to the Lightning namespace not picked, or ``None``."""
    foreign = NAMESPACES[_other(NAMESPACE)]
    for base in getattr(cls, "__mro__", ()):
        module = getattr(base, "__module__", "") or ""
        if module == foreign or module.startswith(foreign + "."):
            return base
    return None


def _short_name(cls: type, namespace: str) -> str:
    """``lightning.Callback`` where the package exports the class at its top, else the full path."""
    top = sys.modules.get(namespace)
    return f"{namespace}.{cls.__name__}" if getattr(top, cls.__name__, None) is cls else f"{cls.__module__}.{cls.__qualname__}"


def foreign_class_sentence(import_path: str, expected: str = "") -> Optional[str]:
    """One sentence when the class at ``import_path`` (already imported by the caller, e.g. a CLI
    ``class_path``) subclasses the other namespace's class; ``None`` when it does not (or cannot be
    imported). ``expected``: the class the option needs (``Callback``, ``SSLModule``, ...)."""
    module_name, _, attr = str(import_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception:  # noqa: BLE001 - no hint, the caller keeps its own message
        return None
    base = foreign_base(cls)
    if base is None:
        return None
    other = _other(NAMESPACE)
    theirs = _short_name(base, other)
    twin_module = NAMESPACES[NAMESPACE] + base.__module__[len(NAMESPACES[other]):]
    twin = getattr(sys.modules.get(twin_module), base.__qualname__, None)
    ours = _short_name(twin, NAMESPACE) if isinstance(twin, type) else f"its {NAMESPACE} counterpart"
    if expected and expected not in {b.__name__ for b in base.__mro__}:  # e.g. a LightningModule for fit's model
        return (f"{import_path} subclasses {theirs} (the {other} namespace) and not {expected}: this option takes "
                f"a subclass of lightning_ssl_backdoor's {expected}, which runs on {NAMESPACE} here (run with "
                f"{ENV_VAR}={other} if your class must use {other}).")
    return (f"{import_path} subclasses {theirs} but ssl-backdoor runs on {NAMESPACE}, whose classes are "
            f"distinct: run with {ENV_VAR}={other}, or subclass {ours}.")


def foreign_class_in_error(text: str) -> Optional[str]:
    """:func:`foreign_class_sentence` for jsonargparse's "Import path X does not correspond to a
    subclass of Y" in ``text`` (a command-line error), else ``None``."""
    import re

    found = re.search(r"Import path ([\w.]+) does not correspond to a subclass of (\w+)", text)
    return foreign_class_sentence(found.group(1), found.group(2)) if found else None

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
    "LightningNamespaceWarning",
    "ModelCheckpoint",
    "NAMESPACE",
    "NAMESPACES",
    "TQDMProgressBar",
    "TorchCheckpointIO",
    "TensorBoardLogger",
    "Trainer",
    "choose_namespace",
    "foreign_base",
    "foreign_class_in_error",
    "foreign_class_sentence",
    "late_import_sentence",
    "pl",
    "seed_everything",
]
