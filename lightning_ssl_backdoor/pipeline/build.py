"""Experiment configs from YAML and the command line, every block typed by what it builds.

:func:`parse_experiment` is the parser of ``ssl-backdoor experiment``; :func:`config_from_dict`
turns parsed (or hand-written) nested dicts into an
:class:`~lightning_ssl_backdoor.pipeline.config.ExperimentConfig` whose blocks are typed:

- ``data`` and ``trainer`` by their dataclasses (jsonargparse, ``--data.batch_size 8`` is an int);
- ``model`` by the constructor of every listed algorithm (the :class:`SSLModule` options plus the
  algorithm's own), ``surrogate`` by :func:`~lightning_ssl_backdoor.attacks.surrogate.train_surrogate`,
  each ``init_args`` by its registered class (:mod:`lightning_ssl_backdoor.typed_options`).

``--model.KEY VALUE`` changes one key and ``--model '{...}'`` merges key by key; an unknown key,
a wrong type or a non-finite number is one ``error:`` sentence naming the key, the expected type,
the value and where it came from, before any work (exit 2).
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import asdict
from typing import Any, Mapping, Optional

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from lightning_ssl_backdoor.attacks import attack_class
from lightning_ssl_backdoor.attacks.surrogate import surrogate_parameters
from lightning_ssl_backdoor.defenses.base import defense_class
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.config import DataConfig, ExperimentConfig, Spec, TrainerConfig
from lightning_ssl_backdoor.signatures import keyword_parameters
from lightning_ssl_backdoor.ssl import resolve_algorithm
from lightning_ssl_backdoor.typed_options import CLI, apply_overrides, split_block_overrides, typed_options

__all__ = ["built_arguments", "check_buildable", "component_spec", "config_dict", "config_from_dict", "config_yaml", "experiment_parser", "model_parameters", "parse_experiment"]

#: blocks typed by a constructor signature, merged key by key from the command line
BLOCKS = ("model", "surrogate")
#: model options the data sets (linked from the data module), not the config
LINKED = ("num_classes", "in_channels")


def experiment_parser() -> ArgumentParser:
    """The ``ssl-backdoor experiment`` parser: ``-c config.yaml``, every config key as a dotted
    option, ``--only``, ``--no_progress`` and ``--print_config``."""
    parser = ArgumentParser(
        prog="ssl-backdoor experiment",
        description="Run attack -> defense -> SSL training -> evaluation and write the report.",
        exit_on_error=False,  # errors reach the command line's error boundary (one sentence)
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile,
                        help="experiment YAML (repeatable: later files and the command line override earlier values)")
    parser.add_class_arguments(ExperimentConfig, None, fail_untyped=False, skip=set(BLOCKS))
    parser.add_argument("--model", type=Optional[dict], default=None,
                        help="the algorithm's constructor options (SSLModule's plus the algorithm's own; "
                             "`ssl-backdoor fit --model FixMatch --help` lists them); --model.KEY VALUE sets one")
    parser.add_argument("--surrogate", type=Optional[dict], default=None,
                        help="the attacker's theta_0: train_surrogate's options (arch, steps, lr, batch_size, "
                             "model_kwargs, ...) or checkpoint: FILE; --surrogate.KEY VALUE sets one")
    parser.add_argument("--only", type=Optional[list[int]], default=None, help="run only these row numbers (0-based)")
    parser.add_argument("--no_progress", type=bool, default=False, help="hide progress bars")
    return parser


def parse_experiment(argv: list[str]) -> tuple[ExperimentConfig, Namespace]:
    """The typed config and the parsed namespace (``only``, ``no_progress``, ``print_config``)."""
    argv = list(argv)
    print_config = any(a == "--print_config" or a.startswith("--print_config=") for a in argv)
    argv = [a for a in argv if not (a == "--print_config" or a.startswith("--print_config="))]
    rest, overrides = split_block_overrides(argv, BLOCKS)
    try:
        ns = experiment_parser().parse_args(rest)
    except Exception as e:  # jsonargparse's ArgumentError, or a YAML / file error under -c
        raise ConfigError(describe_parser_error(e, rest)) from None
    files = config_files(argv)
    base_origin = ", ".join(files) if files else "the defaults"
    d = ns.as_dict()
    algorithms = [component_spec(a) for a in (d.get("algorithms") or ["fixmatch"])]
    params = {"model": model_parameters(algorithms), "surrogate": surrogate_parameters()}
    origins: dict[str, dict[str, str]] = {}
    for block in BLOCKS:
        d[block], origins[block] = apply_overrides(block, d.get(block), overrides[block], base_origin, params[block])
    cfg = config_from_dict(d, origins=origins, default_origin=base_origin)
    check_buildable(cfg)
    ns.print_config = print_config
    return cfg, ns


def check_buildable(cfg: ExperimentConfig) -> None:
    """Build every algorithm, attack and defense of ``cfg`` once, without data: each constructor
    checks the ranges of its own options (a threshold in [0, 1], a positive budget, ...), so a bad
    value stops the run here, before any work, with that constructor's one sentence. The
    algorithms are built on a 2-class, 1-channel stand-in, without warm-start weights or an own
    model (those are checked when the row builds them)."""
    from lightning_ssl_backdoor.attacks import build_attack
    from lightning_ssl_backdoor.defenses.base import build_defense

    def attempt(where: str, build: Any) -> None:
        try:
            build()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {' '.join(str(e).split())}.") from None

    from lightning_ssl_backdoor.data import SSLDataModule

    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1 or 3 (or null for the dataset's own), got {cfg.data.channels!r}.")
    attempt("data", lambda: SSLDataModule(**vars(cfg.data), seed=0))  # sizes, batches, subset (no data read)
    for spec in cfg.algorithms:
        args = {k: v for k, v in {**cfg.model, **spec.init_args}.items() if k not in ("init_weights", "model")}
        cls = resolve_algorithm(spec.name)
        attempt(f"algorithms[{spec.display}] with model", lambda: cls(num_classes=2, in_channels=1, **args))
    for spec in cfg.attacks:
        if spec is not None:
            attempt(f"attacks[{spec.display}]", lambda: build_attack(spec.name, **{**spec.init_args, "progress": False}))
    for spec in cfg.defenses:
        if spec is not None:
            attempt(f"defenses[{spec.display}]", lambda: build_defense(spec))


def config_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain data (components as ``{name, init_args, label}``): what ``--print_config``
    prints and ``results.json`` records."""
    return asdict(cfg)


def config_yaml(cfg: ExperimentConfig) -> str:
    """``--print_config``'s output: the typed config as YAML, as the rows will be built from it."""
    return yaml.safe_dump(config_dict(cfg), sort_keys=False, default_flow_style=None, width=100)


def config_files(argv: list[str]) -> list[str]:
    """The ``-c`` / ``--config`` files of a command line, in order."""
    out = []
    for i, a in enumerate(argv):
        if a in ("-c", "--config") and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def describe_parser_error(e: Exception, argv: list[str]) -> str:
    """One sentence for a jsonargparse error: the key, what it expected, the value and the origin."""
    text = " ".join(str(e).split())
    files = config_files(argv)
    key = None
    if 'Parser key "' in text:
        key = text.split('Parser key "', 1)[1].split('"', 1)[0]
    origin = CLI if key and any(a.split("=")[0] in (f"--{key}", f"--{key.split('.')[0]}") for a in argv) else (
        ", ".join(files) or CLI)
    if key and "Union subtypes" in text and "Subtypes: [" in text:
        subtypes = text.split("Subtypes: [", 1)[1].split("] Errors:", 1)[0]
        expected = re.sub(r"<class '([\w.]+)'>", r"\1", subtypes).replace("NoneType", "null").replace(", ", " or ")
        value = text.rsplit("Given value:", 1)[1].strip() if "Given value:" in text else "?"
        hint = f"; write a list as --{key} '[1, 2]'" if "list" in expected else ""
        return f"{key} must be {expected}, got {value!r} (from {origin}){hint}."
    if key and "Expected a" in text:
        expected = text.split("Expected a", 1)[1].split(". Got value:", 1)[0].strip().strip("<>").replace("class ", "")
        value = text.split("Got value:", 1)[1].strip() if "Got value:" in text else "?"
        return f"{key} must be {expected.strip(chr(39))}, got {value!r} (from {origin})."
    if text.startswith("unrecognized arguments:"):
        given = text.split(":", 1)[1].strip().split()[0]
        return (f"unknown option {given} (from {CLI}); `ssl-backdoor experiment --help` lists the options, "
                "and --model.KEY / --surrogate.KEY take any option of those blocks.")
    if "does not accept option" in text or "Unexpected keys" in text:
        return f"{text.rstrip('.')} (from {', '.join(files) or CLI}); `ssl-backdoor experiment --help` lists the options."
    if key:
        return f"{key}: {text.split(':', 1)[1].strip().split(' Got value')[0]} (from {origin})."
    return text if text.endswith(".") else text + "."


def model_parameters(algorithms: list[Spec]) -> dict[str, inspect.Parameter]:
    """The options a ``model`` block may hold: those of every listed algorithm (the SSLModule
    options and each algorithm's own), less the ones the data sets (``num_classes``, ``in_channels``)."""
    params: dict[str, inspect.Parameter] = {}
    for spec in algorithms:
        for name, p in keyword_parameters(resolve_algorithm(spec.name), LINKED).items():
            params.setdefault(name, p)
    return params


def config_from_dict(d: Mapping[str, Any], origins: Optional[Mapping[str, Mapping[str, str]]] = None,
                     default_origin: str = "the config") -> ExperimentConfig:
    """Build a typed :class:`ExperimentConfig` from parsed (or hand-written) nested dicts."""
    origins = dict(origins or {})
    fields = {k: d[k] for k in ExperimentConfig.__dataclass_fields__ if k in d and d[k] is not None}
    unknown = sorted(set(d) - set(ExperimentConfig.__dataclass_fields__) - {"config", "only", "no_progress", "__path__"})
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (from {default_origin}); the keys are "
                          f"{', '.join(ExperimentConfig.__dataclass_fields__)}.")
    for name, cls in (("data", DataConfig), ("trainer", TrainerConfig)):
        if isinstance(fields.get(name), Mapping):
            block = typed_options(keyword_parameters(cls), dict(fields[name]), name, name, default_origin=default_origin)
            fields[name] = cls(**block)
    cfg = ExperimentConfig(**fields)
    cfg.algorithms = [component_spec(a) for a in cfg.algorithms]
    cfg.attacks = [None if a is None else component_spec(a) for a in cfg.attacks]
    cfg.defenses = [None if x is None else component_spec(x) for x in cfg.defenses]
    model = typed_options(model_parameters(cfg.algorithms), dict(cfg.model or {}), "model",
                          "the algorithm", origins.get("model"), default_origin)
    for spec in cfg.algorithms:
        own = keyword_parameters(resolve_algorithm(spec.name), LINKED)
        stray = [k for k in model if k not in own]
        if stray:
            raise ConfigError(f"model.{stray[0]} is not an option of algorithm {spec.name!r} (from "
                              f"{(origins.get('model') or {}).get(stray[0], default_origin)}); give it in the "
                              "init_args of the algorithms it belongs to.")
        spec.init_args = typed_options(own, spec.init_args, f"algorithms[{spec.display}].init_args", spec.name,
                                       default_origin=default_origin)
    cfg.model = model
    cfg.surrogate = typed_options(surrogate_parameters(), dict(cfg.surrogate or {}), "surrogate", "the surrogate",
                                  origins.get("surrogate"), default_origin)
    for spec in cfg.attacks:
        if spec is not None:
            cls = attack_class(spec.name)
            spec.init_args = typed_options(cls.options(), spec.init_args, f"attacks[{spec.display}].init_args",
                                           f"attack {cls.name!r}", default_origin=default_origin)
    for spec in cfg.defenses:
        if spec is not None:
            spec.init_args = typed_options(keyword_parameters(defense_class(spec.name)), spec.init_args,
                                           f"defenses[{spec.display}].init_args", f"defense {spec.name!r}",
                                           default_origin=default_origin)
    return cfg


def built_arguments(algorithm: Spec, attack: Optional[Spec], defense: Optional[Spec], seed: int,
                    model_args: Mapping[str, Any], split: Any) -> dict[str, Any]:
    """What a row's components were built with: every constructor option, typed, with the
    defaults filled in (``results.json``'s ``arguments``)."""
    from lightning_ssl_backdoor.signatures import bind_options

    linked = {"num_classes": len(split.test.classes), "in_channels": int(split.test.images.shape[1])}
    out: dict[str, Any] = {"algorithm": bind_options(resolve_algorithm(algorithm.name),
                                                     {**model_args, **algorithm.init_args, **linked})}
    if attack is not None:
        cls = attack_class(attack.name)
        out["attack"] = bind_options(cls, {"seed": seed, **attack.init_args}, (*cls.fixed_options, "progress"))
    if defense is not None:
        out["defense"] = bind_options(defense_class(defense.name), defense.init_args)
    return json.loads(json.dumps(out, default=repr))


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
        extra = sorted(set(x) - {"name", "init_args", "label"})
        if extra:
            raise ConfigError(f"component {x['name']!r} has an unknown key {extra[0]!r}; a component is "
                              "{name: ..., init_args: {...}, label: ...}.")
        init_args = x.get("init_args") or {}
        if not isinstance(init_args, Mapping):
            raise ConfigError(f"init_args of {x['name']!r} must be a mapping, got {init_args!r}.")
        return Spec(name=x["name"], init_args=dict(init_args), label=x.get("label"))
    raise ConfigError(f"cannot read {x!r} as a component; write a name or {{name: ..., init_args: {{...}}}}.")
