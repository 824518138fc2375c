"""Experiment configs from YAML and the command line: the parser of ``ssl-backdoor experiment`` and
:func:`config_from_dict`, which turns parsed (or hand-written) nested dicts into an
:class:`~lightning_ssl_backdoor.pipeline.config.ExperimentConfig` of :class:`Spec` lists.
"""

from __future__ import annotations

from typing import Any, Optional

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.config import DataConfig, ExperimentConfig, Spec, TrainerConfig

__all__ = ["component_spec", "config_from_dict", "experiment_parser", "parse_experiment"]


def experiment_parser() -> ArgumentParser:
    """The ``ssl-backdoor experiment`` parser: ``-c config.yaml``, every config key as a dotted
    option, ``--only`` and ``--no_progress``."""
    parser = ArgumentParser(
        prog="ssl-backdoor experiment",
        description="Run attack -> defense -> SSL training -> evaluation and write the report.",
        exit_on_error=False,  # errors reach the command line's error boundary (one sentence)
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="experiment YAML")
    parser.add_class_arguments(ExperimentConfig, None, fail_untyped=False)
    parser.add_argument("--only", type=Optional[list[int]], default=None, help="run only these row numbers (0-based)")
    parser.add_argument("--no_progress", type=bool, default=False, help="hide progress bars")
    return parser


def parse_experiment(argv: list[str]) -> tuple[ExperimentConfig, Namespace]:
    """The config and the parsed namespace (``only``, ``no_progress``) of a command line."""
    ns = experiment_parser().parse_args(argv)
    return config_from_dict(ns.as_dict()), ns


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from parsed (or hand-written) nested dicts."""
    fields = {k: d[k] for k in ExperimentConfig.__dataclass_fields__ if k in d and d[k] is not None}
    if isinstance(fields.get("data"), dict):
        fields["data"] = DataConfig(**fields["data"])
    if isinstance(fields.get("trainer"), dict):
        fields["trainer"] = TrainerConfig(**fields["trainer"])
    cfg = ExperimentConfig(**fields)
    cfg.algorithms = [component_spec(a) for a in cfg.algorithms]
    cfg.attacks = [None if a is None else component_spec(a) for a in cfg.attacks]
    cfg.defenses = [None if x is None else component_spec(x) for x in cfg.defenses]
    return cfg


def component_spec(x: Any) -> Spec:
    """A :class:`Spec` from a name, a ``{name, init_args, label}`` mapping or a Spec."""
    if isinstance(x, Spec):
        return x
    if isinstance(x, str):
        return Spec(name=x)
    if isinstance(x, dict):
        x = {k: v for k, v in x.items() if k != "class_path"}
        if not isinstance(x.get("name"), str):
            raise ConfigError(f"component {x!r} needs a name; write {{name: ..., init_args: {{...}}}}.")
        return Spec(name=x["name"], init_args=dict(x.get("init_args") or {}), label=x.get("label"))
    raise ConfigError(f"cannot read {x!r} as a component; write a name or {{name: ..., init_args: {{...}}}}.")
