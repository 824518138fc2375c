"""Range checks of an experiment config, before anything runs or is created.

:func:`validate_ranges` refuses, with one sentence naming the field (a :class:`ConfigError`, exit
code 2):

* seeds outside ``0 <= s < 2**32`` (the range ``numpy`` and ``torch`` seeds accept), or none;
* intervals and counts that are not positive integers: ``trainer.max_steps``,
  ``val_check_interval``, ``log_every_n_steps``, ``checkpoint_every_n_steps``, ``jobs``,
  ``threads``, ``dynamics_every``, the data's batch sizes and label counts;
* a float that is NaN or infinite anywhere in the config (``model``, ``surrogate``, every
  ``init_args``, at any depth);
* trainer options Lightning would refuse at the first ``fit``: ``precision`` by Lightning's own
  parser of it, ``accelerator`` and ``strategy`` by Lightning's registries, and the combination
  with ``devices`` by Lightning's accelerator connector (the object ``Trainer`` builds from them),
  so an accelerator this machine lacks (``gpu`` without CUDA, ``tpu`` without ``torch_xla``) is
  refused up front too.

The experiment command calls it right after parsing, before the output folder, ``cache/`` or
``tensorboard/`` exist; :class:`~lightning_ssl_backdoor.pipeline.experiment.Runner` calls it again
for configs built in code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass
from typing import Any, Iterator

from lightning_ssl_backdoor.errors import ConfigError

SEED_LIMIT = 2 ** 32


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _positive(name: str, value: Any, optional: bool = False, minimum: int = 1) -> None:
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        extra = " or null" if optional else ""
        raise ConfigError(f"{name} must be {need}{extra}, got {value!r}.")


def _non_finite(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every float in ``value`` that is NaN or infinite."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{where}[{i}]")


def check_seeds(seeds: Any) -> None:
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ConfigError(f"seeds must list at least one seed, got {seeds!r}.")
    for s in seeds:
        if not _is_int(s) or not 0 <= s < SEED_LIMIT:
            raise ConfigError(f"seeds: {s!r} is not a seed; seeds are integers with 0 <= seed < 2**32.")


def check_trainer_options(t: Any) -> None:
    """``t`` (a TrainerConfig): positive intervals, and Lightning's own verdict on precision,
    accelerator, strategy and devices."""
    for name in ("max_steps", "val_check_interval", "log_every_n_steps", "checkpoint_every_n_steps"):
        _positive(f"trainer.{name}", getattr(t, name))
    check_lightning_options(t.accelerator, t.devices, t.strategy, t.precision)


def check_lightning_options(accelerator: Any, devices: Any, strategy: Any, precision: Any) -> None:
    """Refuse values of the four Lightning Trainer options that Lightning itself would refuse."""
    from lightning_ssl_backdoor._lightning import NAMESPACE

    base = "lightning.pytorch" if NAMESPACE == "lightning" else "pytorch_lightning"
    fabric = "lightning.fabric" if NAMESPACE == "lightning" else "lightning_fabric"
    import importlib

    accelerators = importlib.import_module(f"{base}.accelerators").AcceleratorRegistry
    strategies = importlib.import_module(f"{base}.strategies").StrategyRegistry
    connector = importlib.import_module(f"{fabric}.connector")
    try:
        connector._convert_precision_to_unified_args(precision)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"trainer.precision {precision!r} is not accepted by Lightning: {_sentence(e)}.") from None
    known = sorted(accelerators.available_accelerators())
    if not isinstance(accelerator, str) or accelerator not in ("auto", "gpu", *known):
        raise ConfigError(f"trainer.accelerator {accelerator!r} is not a Lightning accelerator; use one of "
                          f"{', '.join(['auto', 'gpu', *known])}.")
    if not isinstance(strategy, str) or strategy not in ("auto", *strategies.available_strategies()):
        raise ConfigError(f"trainer.strategy {strategy!r} is not a Lightning strategy; use 'auto', 'ddp' or another "
                          "name of Lightning's StrategyRegistry.")
    if isinstance(devices, bool) or not isinstance(devices, (int, str, list, tuple)):
        raise ConfigError(f"trainer.devices must be an integer, 'auto', a list of device indices or a string "
                          f"such as '0,1', got {devices!r}.")
    accel_connector = importlib.import_module(f"{base}.trainer.connectors.accelerator_connector")
    try:  # what Trainer(...) builds from these four: Lightning's own checks of devices and availability
        accel_connector._AcceleratorConnector(devices=devices, accelerator=accelerator, strategy=strategy,
                                              precision=precision, num_nodes=1)
    except Exception as e:  # noqa: BLE001 - Lightning raises TypeError, ValueError, MisconfigurationException,
        # ModuleNotFoundError (a missing backend) ... for a setting it refuses
        text = str(e).lower()
        field = next((f for f in ("devices", "precision", "strategy") if f in text), "accelerator")
        if field == "accelerator":
            raise ConfigError(f"trainer.accelerator {accelerator!r} cannot be used on this machine: {_sentence(e)}; "
                              "choose another accelerator ('auto' picks one that is there).") from None
        value = {"devices": devices, "precision": precision, "strategy": strategy}[field]
        raise ConfigError(f"trainer.{field} {value!r} is not accepted by Lightning with accelerator {accelerator!r}: "
                          f"{_sentence(e)}.") from None


def _sentence(e: BaseException) -> str:
    return " ".join(str(e).split()).rstrip(".!") or type(e).__name__


def validate_ranges(cfg: Any) -> None:
    """Raise :class:`ConfigError` for the first out-of-range value of ``cfg`` (an ExperimentConfig);
    see the module docstring for what is checked."""
    check_seeds(cfg.seeds)
    _positive("jobs", cfg.jobs)
    _positive("threads", cfg.threads, optional=True)
    _positive("dynamics_every", getattr(cfg, "dynamics_every", None), optional=True)
    d = cfg.data
    _positive("data.batch_size", d.batch_size)
    _positive("data.eval_batch_size", d.eval_batch_size)
    _positive("data.mu", d.mu, minimum=0)
    _positive("data.num_workers", d.num_workers, minimum=0)
    _positive("data.labels_per_class", d.labels_per_class, optional=True)
    _positive("data.num_labeled", d.num_labeled, optional=True)
    _positive("data.num_unlabeled", d.num_unlabeled, optional=True, minimum=0)
    for where, value in _non_finite({k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, ""):
        raise ConfigError(f"{where} must be a finite number, got {value!r}.")
    check_trainer_options(cfg.trainer)
