"""Defenses in the experiment runner.

A defense is a class registered under a name (``defense: {name: ..., init_args: {...}}`` in an
experiment config). Its :meth:`Defense.run` receives a :class:`DefenseContext` (the attacked split,
the row's algorithm, model, data and trainer settings, a cache folder keyed by everything that
determines the stage, and ``ctx.train(...)``, the runner's resumable training call) and returns the
row's result: ``{"test": {...}, "history": [...], "fit_seconds", "steps", "has_ema", "defense_info"}``.

Shapes (ARCHITECTURE.md, "How each defense plugs in"):
- data-stage defenses subclass :class:`DataDefense` and implement ``filter(split, ctx)``; the row's
  algorithm then trains on what they keep (clustering, influence, DePuD's purified data);
- training plug-ins return a different algorithm spec from ``algorithm(ctx)`` (Backdoor Invalidator);
- pipeline defenses override ``run`` and chain their own stages (DBD, self-training).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.config import DataConfig, Spec, TrainerConfig

#: defense name -> module that registers it on import (kept lazy: defenses import heavy code)
DEFENSE_MODULES: dict[str, str] = {
    "influence": "lightning_ssl_backdoor.defenses.influence_defense",
    "clustering": "lightning_ssl_backdoor.defenses.clustering_defense",
    "dbd": "lightning_ssl_backdoor.defenses.dbd",
    "depud": "lightning_ssl_backdoor.defenses.depud",
    "invalidator": "lightning_ssl_backdoor.defenses.invalidator",
    "self_training": "lightning_ssl_backdoor.defenses.self_training_defense",
}
DEFENSES: dict[str, type["Defense"]] = {}


def register_defense(cls: type["Defense"]) -> type["Defense"]:
    """Class decorator: make ``cls`` available as ``defense: {name: cls.name}``."""
    if not cls.name:
        raise ValueError("a registered defense needs a name")
    DEFENSES[cls.name] = cls
    return cls


def defense_class(name: str) -> type["Defense"]:
    if name not in DEFENSES and name in DEFENSE_MODULES:
        try:
            importlib.import_module(DEFENSE_MODULES[name])
        except ModuleNotFoundError as e:
            raise ConfigError(f"defense '{name}' is not available in this version ({e.name} is missing).") from None
    if name not in DEFENSES:
        raise ConfigError(f"unknown defense '{name}'; choose one of {', '.join(sorted(set(DEFENSE_MODULES) | set(DEFENSES)))}.")
    return DEFENSES[name]


def build_defense(spec: Spec) -> "Defense":
    cls = defense_class(spec.name)
    try:
        return cls(**spec.init_args)
    except TypeError as e:
        raise ConfigError(f"defense '{spec.name}' got invalid options: {e}.") from None


@dataclass
class DefenseContext:
    """Everything a defense may use; ``train`` is the runner's cached, resumable training call."""

    split: SSLSplit
    seed: int
    algorithm: Spec
    model_args: dict
    data: DataConfig
    trainer: TrainerConfig
    stage_dir: Path
    progress: bool = True
    trainer_fn: Optional[Callable[..., dict]] = None
    info: dict = field(default_factory=dict)

    def train(
        self,
        split: SSLSplit,
        name: str = "train",
        algorithm: Optional[Spec] = None,
        model_args: Optional[dict] = None,
        trainer: Optional[TrainerConfig] = None,
        data: Optional[DataConfig] = None,
        extra_callbacks: Optional[list] = None,
    ) -> dict[str, Any]:
        """Train (or reuse the cached result of) one model in ``stage_dir / name``."""
        from lightning_ssl_backdoor.pipeline.training import train_row

        fn = self.trainer_fn or train_row
        return fn(
            split,
            algorithm or self.algorithm,
            self.model_args if model_args is None else model_args,
            data or self.data,
            trainer or self.trainer,
            self.seed,
            self.stage_dir / name,
            enable_progress_bar=self.progress,
            extra_callbacks=extra_callbacks,
        )

    def with_trainer(self, **changes: Any) -> TrainerConfig:
        return replace(self.trainer, **changes)


class Defense:
    """Base class: ``run(ctx)`` returns the row result (see module docstring)."""

    name: ClassVar[str] = ""

    def algorithm(self, ctx: DefenseContext) -> Spec:
        """The algorithm the defended model trains with (training plug-ins override this)."""
        return ctx.algorithm

    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        res = dict(ctx.train(ctx.split, algorithm=self.algorithm(ctx)))
        res["defense_info"] = dict(ctx.info)
        return res


class DataDefense(Defense):
    """Detect / filter / purify the data, then train the row's algorithm on the result."""

    def filter(self, split: SSLSplit, ctx: DefenseContext) -> tuple[SSLSplit, dict[str, Any]]:
        raise NotImplementedError

    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        split, info = self.filter(ctx.split, ctx)
        res = dict(ctx.train(split, algorithm=self.algorithm(ctx)))
        res["defense_info"] = {**ctx.info, **info}
        return res
