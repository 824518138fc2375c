"""Checks an experiment config before anything runs: every name resolves through its registry,
every size is sane. A bad entry fails at once with one sentence instead of after hours of earlier
rows (the runner calls :func:`check_experiment` when it is built)."""

from __future__ import annotations

import re

from lightning_ssl_backdoor.attacks import attack_class
from lightning_ssl_backdoor.data.readers_common import check_image_size
from lightning_ssl_backdoor.defenses.base import defense_class
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.config import ExperimentConfig
from lightning_ssl_backdoor.spec import Spec
from lightning_ssl_backdoor.ssl import resolve_algorithm


def check_experiment(cfg: ExperimentConfig) -> None:
    check_image_size(cfg.data.image_size)
    for kind, specs, resolve in (("algorithms", cfg.algorithms, resolve_algorithm),
                                 ("attacks", cfg.attacks, attack_class),
                                 ("defenses", cfg.defenses, defense_class)):
        for spec in specs:
            if spec is None:
                continue
            if not isinstance(spec, Spec):
                raise ConfigError(f"{kind}: cannot read {spec!r}; write a name or {{name: ..., init_args: {{...}}}}.")
            if not isinstance(spec.init_args, dict):
                raise ConfigError(f"{kind}: init_args of {spec.name!r} must be a mapping, got {spec.init_args!r}.")
            resolve(spec.name)


#: an experiment name: a slug (letters, digits, ``.``, ``_``, ``-``; not starting with a dot), so
#: the default output folder ``runs/<name>`` is always one folder inside ``runs/``
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: object) -> str:
    """``name`` when it is a slug (:data:`NAME_PATTERN`, no ``..``); a ConfigError otherwise: a path
    separator, ``..`` or an absolute path would put the report outside ``runs/``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"name {name!r} is not a plain name: use letters, digits, '.', '_' and '-' only (no path separators, "
            "no '..', at most 128 characters); to write the report elsewhere, pass --output DIR."
        )
    return name
