"""The defense interface: :class:`Defense`, its three shapes, :class:`DefenseContext` and the registry.

A defense is a class registered under a name (``defense: {name: ..., init_args: {...}}`` in an
experiment config). The runner builds it with :func:`build_defense`, hands it a
:class:`DefenseContext` and takes what :meth:`Defense.run` returns as the row's result::

    {"test": {"acc", "asr", "asr_cond", ... (and "_ema" twins when has_ema)}, "history": [...],
     "fit_seconds": float, "steps": int, "has_ema": bool, "defense_info": {...}}

The context carries the attacked split (``ctx.split``: the defender sees ``split.labeled`` and
``split.unlabeled``; the test set is only for the evaluation the runner reports), the row's
algorithm, model, data and trainer settings, a cache folder ``ctx.stage_dir`` keyed by everything
that determines the stage, and the runner's calls. Defenses never import the runner
(the ``pipeline`` package); the runner sets the calls when it builds the context:

- ``ctx.train(split, name=..., algorithm=..., ...)``: the runner's cached, resumable training of one
  model in ``stage_dir / name`` (``train_fn``, mandatory);
- ``ctx.train_undefended()``: the row's own training with no defense, weights kept, in the runner's
  folder for the undefended row (``undefended_dir``) so that row and every repair or detector of it
  share one training instead of each training its own copy;
- ``ctx.load_model(result)``: the trained classifier(s) of a ``ctx.train(..., save_model=True)``
  result as a :class:`TrainedModel` (raw weights, and the EMA copy where the algorithm keeps one);
- ``ctx.evaluate(model)``: the runner's test metrics of any classifier ``nn.Module`` on the row's
  test set and attack trigger: ``{"acc", "asr", "asr_cond", "targeted"}`` (those that apply).

Shapes (ARCHITECTURE.md, "How each defense plugs in"):

- data-stage defenses subclass :class:`DataDefense` and implement ``filter(split, ctx)``; the row's
  algorithm then trains on what they keep (clustering, influence, DePuD's purified data);
- training plug-ins return a different algorithm spec from ``algorithm(ctx)`` (Backdoor Invalidator);
- model-repair defenses subclass :class:`ModelDefense` and implement ``repair(model, ctx)``: the row's
  model is trained as usual, then repaired with the defender's data (``ctx.split.labeled``, and
  ``ctx.split.unlabeled`` where the method uses it) and evaluated (fine-tuning, fine-pruning, NAD,
  ABL, Neural Cleanse, ...);
- pipeline defenses override ``run`` and chain their own stages (DBD).

Diagnostics a defense wants in the report go into ``ctx.info`` (merged into ``defense_info``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional

from torch import nn

from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.data.artifacts import atomic_write_json
from lightning_ssl_backdoor.data.cache_entry import read_json_entry
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.signatures import publish_signature
from lightning_ssl_backdoor.defenses.repair_log import repair_logging
from lightning_ssl_backdoor.models.interface import instantiate, require
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig, config_hash

#: name -> class of every registered defense (filled by :func:`register_defense` on import)
DEFENSES: dict[str, type["Defense"]] = {}

#: how reports (LaTeX tables, figure legends) name each registered defense; see :func:`display_name`
DISPLAY_NAMES = {
    "abl": "ABL", "activation_clustering": "Activation clustering", "clustering": "Clustering", "dbd": "DBD",
    "depud": "DePuD", "dpsgd": "DP-SGD", "fp": "FP", "ft": "FT", "influence": "Influence", "invalidator": "BI",
    "mcr": "MCR", "nad": "NAD", "neural_cleanse": "NC", "oracle_removal": "Oracle removal",
    "self_training": "Self-training", "self_training_simclr": "Self-training (SimCLR)", "shrinkpad": "ShrinkPad",
    "spectral": "SS", "strong_augment": "Strong augmentation", "upure": "UPure",
}


def display_name(name: str) -> str:
    """The name reports print for the defense registered as ``name`` (the name itself if unknown)."""
    return DISPLAY_NAMES.get(name, name)


def register_defense(cls: type["Defense"]) -> type["Defense"]:
    """Class decorator: make ``cls`` available as ``defense: {name: cls.name}``."""
    if not cls.name:
        raise ValueError("a registered defense needs a name")
    DEFENSES[cls.name] = cls
    return cls


def defense_class(name: str) -> type["Defense"]:
    """The registered defense called ``name`` (``lightning_ssl_backdoor.defenses``, the package this
    module lives in, imports every defense, so all are registered once this module is loaded)."""
    if name not in DEFENSES:
        raise ConfigError(f"unknown defense '{name}'; choose one of {', '.join(sorted(DEFENSES))}.")
    return DEFENSES[name]


def build_defense(spec: Spec) -> "Defense":
    """An instance of the defense ``spec`` names, built with its ``init_args``."""
    cls = defense_class(spec.name)
    try:
        return cls(**spec.init_args)
    except TypeError as e:
        raise ConfigError(f"defense '{spec.name}' got invalid options: {e}.") from None


@dataclass
class TrainedModel:
    """The classifiers of one trained row: raw weights and, where the algorithm keeps one, EMA."""

    raw: nn.Module
    ema: Optional[nn.Module] = None

    @property
    def evaluated(self) -> nn.Module:
        """The weights the runner reports (EMA when there is one, as for undefended rows)."""
        return self.ema if self.ema is not None else self.raw


@dataclass(kw_only=True)
class DefenseContext:
    """Everything a defense may use (see the module docstring); the runner fills the ``*_fn`` calls.

    ``train_fn`` has the signature of the runner's ``train_row(split, algorithm, model_args, data,
    trainer, seed, workdir, enable_progress_bar=..., extra_callbacks=..., save_model=...)``;
    ``load_fn(result, ctx)`` and ``evaluate_fn(model, ctx)`` back :meth:`load_model` and
    :meth:`evaluate`. ``undefended_dir``: where the runner trains this row without a defense
    (``cache/train-<key>``), shared through :meth:`train_undefended`.
    """

    split: SSLSplit
    seed: int
    algorithm: Spec
    model_args: dict
    data: DataConfig
    trainer: TrainerConfig
    stage_dir: Path
    train_fn: Callable[..., dict]
    load_fn: Optional[Callable[[dict, "DefenseContext"], TrainedModel]] = None
    evaluate_fn: Optional[Callable[[nn.Module, "DefenseContext"], dict]] = None
    progress: bool = True
    info: dict = field(default_factory=dict)
    undefended_dir: Optional[Path] = None
    # the row's TensorBoard (folder, run name): a model a defense trains without ``train`` logs to
    # the run ``<run name>/<model>`` there (self-training's students); None: not logged
    tensorboard: Optional[tuple] = None

    def train(
        self,
        split: SSLSplit,
        name: str = "train",
        algorithm: Optional[Spec] = None,
        model_args: Optional[dict] = None,
        trainer: Optional[TrainerConfig] = None,
        data: Optional[DataConfig] = None,
        extra_callbacks: Optional[list] = None,
        save_model: bool = False,
        workdir: Optional[Path] = None,
    ) -> dict[str, Any]:
        """Train (or reuse the cached result of) one model in ``stage_dir / name`` (or ``workdir``,
        e.g. a :meth:`shared_dir`); with ``save_model`` its final weights are kept for
        :meth:`load_model`."""
        extra = {"save_model": True} if save_model else {}
        return self.train_fn(
            split,
            algorithm or self.algorithm,
            self.model_args if model_args is None else model_args,
            data or self.data,
            trainer or self.trainer,
            self.seed,
            Path(workdir) if workdir is not None else self.stage_dir / name,
            enable_progress_bar=self.progress,
            extra_callbacks=extra_callbacks,
            **extra,
        )

    def train_undefended(self, name: str = "train") -> dict[str, Any]:
        """The row trained as if undefended (``self.algorithm`` on ``self.split``, the row's
        settings), with its weights kept for :meth:`load_model`.

        Trained in ``undefended_dir`` when the runner gives one, so the undefended row and every
        model repair or detector of it (which would train the very same model) share one training
        (the runner's ``train_fn`` makes parallel rows wanting it take turns). A result cached there
        without weights (an older run), or no ``undefended_dir``, trains in ``stage_dir / name``."""
        if self.undefended_dir is not None:
            res = self.train_fn(self.split, self.algorithm, self.model_args, self.data, self.trainer, self.seed,
                                Path(self.undefended_dir), enable_progress_bar=self.progress, extra_callbacks=None,
                                save_model=True)
            if res.get("model_path") and Path(res["model_path"]).is_file():
                return res
        return self.train(self.split, name=name, save_model=True)

    def shared_dir(self, tag: str, payload: Any) -> Path:
        """A training folder shared by every row of this split, seed and settings whose defense
        trains the same model (``payload``: what determines that model besides the row), e.g. two
        rows that differ only in how the trained model is tested. Beside the runner's undefended
        folder when there is one, else ``stage_dir / tag`` (not shared)."""
        if self.undefended_dir is None:
            return self.stage_dir / tag
        key = config_hash(Path(self.undefended_dir).name, tag, payload)
        return Path(self.undefended_dir).parent / f"{tag}-{key}"

    def load_model(self, result: dict[str, Any]) -> TrainedModel:
        """The trained classifier(s) of a :meth:`train` result made with ``save_model=True``."""
        if self.load_fn is None:
            raise ConfigError("this defense context has no load_fn; build it with the runner's defense_context().")
        return self.load_fn(result, self)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The runner's test metrics (CA, ASR, conditioned ASR, ...) of ``model`` on this row."""
        if self.evaluate_fn is None:
            raise ConfigError("this defense context has no evaluate_fn; build it with the runner's defense_context().")
        return self.evaluate_fn(model, self)

    def with_trainer(self, **changes: Any) -> TrainerConfig:
        return replace(self.trainer, **changes)


class Defense:
    """Base class: ``run(ctx)`` returns the row result (see the module docstring).

    ``requires``: what the defense reads of the row's model besides ``forward`` (keys of
    :data:`lightning_ssl_backdoor.models.interface.MEMBERS`: ``features``, ``head``, ``last_conv``,
    ``backbone``). :meth:`check_model` checks a model against it; :meth:`check_model_args` checks a
    model of the user's own given in ``ctx.model_args["model"]`` before any training.
    """

    name: ClassVar[str] = ""
    requires: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a defense taking ``**options`` lists them (``signature_options``) in ``cls.__signature__``
        super().__init_subclass__(**kwargs)
        publish_signature(cls)

    def check_model(self, model: Any) -> nn.Module:
        """``model`` if it has everything in ``requires``, else one ``ConfigError`` naming the member and the fix."""
        return require(model, self.requires, f"defense '{self.name}' ({type(self).__name__})")

    def check_model_args(self, ctx: DefenseContext) -> None:
        """Check the row's own model (an instance, or a class_path mapping built here to be checked)
        before anything trains; built-in ``arch`` models have every member."""
        given = (ctx.model_args or {}).get("model")
        if given is None or not self.requires:
            return
        self.check_model(instantiate(given) if isinstance(given, Mapping) else given)

    def algorithm(self, ctx: DefenseContext) -> Spec:
        """The algorithm the defended model trains with (training plug-ins override this)."""
        return ctx.algorithm

    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        self.check_model_args(ctx)
        res = dict(ctx.train(ctx.split, algorithm=self.algorithm(ctx)))
        res["defense_info"] = dict(ctx.info)
        return res


class DataDefense(Defense):
    """Detect / filter / purify the data, then train the row's algorithm on the result."""

    def filter(self, split: SSLSplit, ctx: DefenseContext) -> tuple[SSLSplit, dict[str, Any]]:
        raise NotImplementedError

    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        self.check_model_args(ctx)
        split, info = self.filter(ctx.split, ctx)
        res = dict(ctx.train(split, algorithm=self.algorithm(ctx)))
        res["defense_info"] = {**ctx.info, **info}
        return res


class ModelDefense(Defense):
    """Repair the trained model: train the row as usual, ``repair`` it, evaluate the result.

    :meth:`run` trains the row's algorithm (:meth:`DefenseContext.train_undefended`: the undefended
    row's cached training, shared by every repair of it), loads the weights
    the runner would report (EMA where there is one), calls ``repair(model, ctx)`` on a copy it
    owns, and evaluates the returned module with ``ctx.evaluate``. The row reports the repaired
    model's metrics (``has_ema`` False: one model is evaluated); ``defense_info`` adds
    ``repaired_weights`` ("raw" / "ema"), ``before`` (the trained model's test metrics) and
    ``repair_seconds``. The repaired result is cached in ``stage_dir / "repaired.json"``.
    """

    def repair(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        """Return the repaired classifier (may modify ``model`` in place and return it)."""
        raise NotImplementedError

    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        self.check_model_args(ctx)
        algorithm = self.algorithm(ctx)
        trained = (ctx.train_undefended() if algorithm == ctx.algorithm
                   else ctx.train(ctx.split, algorithm=algorithm, save_model=True))
        done = ctx.stage_dir / "repaired.json"
        cached = read_json_entry(done, lambda v: isinstance(v, dict))  # a damaged entry: set aside, rebuilt
        if cached is not None:
            return cached
        models = ctx.load_model(trained)
        t0 = time.perf_counter()
        with repair_logging(ctx.tensorboard, self.name):  # sgd_train loops log to the row's TensorBoard
            repaired = self.repair(self.check_model(models.evaluated), ctx)
        seconds = time.perf_counter() - t0
        res = {
            "test": ctx.evaluate(repaired),
            "history": trained["history"],
            "fit_seconds": trained["fit_seconds"] + seconds,
            "steps": trained["steps"],
            "has_ema": False,
            "defense_info": {
                **ctx.info,
                "repaired_weights": "ema" if models.ema is not None else "raw",
                "before": trained["test"],
                "repair_seconds": round(seconds, 2),
            },
        }
        atomic_write_json(done, res)
        return res
