"""The attack registry: names -> classes, and building an attack from a name or a config mapping.

Used by the ``poison`` command (:mod:`lightning_ssl_backdoor.attacks.cli`) and the experiment runner.
"""

from __future__ import annotations

from typing import Any, Dict, Type

from lightning_ssl_backdoor.attacks.base import Attack
from lightning_ssl_backdoor.attacks.clean_label import (
    CLBadNetsAttack,
    CleanLabelAttack,
    FreqAttack,
    MosaicAttack,
    TurnerCleanLabelAttack,
)
from lightning_ssl_backdoor.attacks.deneb import DeNeBAttack
from lightning_ssl_backdoor.attacks.interpolation import InterpolationAttack
from lightning_ssl_backdoor.attacks.narcissus import NarcissusAttack
from lightning_ssl_backdoor.attacks.poison_label import BadNetsAttack, BlendedAttack, LabelConsistentAttack, WaNetAttack
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.names import resolve

__all__ = ["ALIASES", "ATTACKS", "DISPLAY_NAMES", "attack_class", "display_name", "build_attack", "build_attack_from_spec"]

ATTACKS: Dict[str, Type[Attack]] = {
    cls.name: cls
    for cls in (
        CleanLabelAttack,
        TurnerCleanLabelAttack,
        DeNeBAttack,
        InterpolationAttack,
        MosaicAttack,
        FreqAttack,
        CLBadNetsAttack,
        NarcissusAttack,
        BadNetsAttack,
        BlendedAttack,
        WaNetAttack,
        LabelConsistentAttack,
    )
}
ALIASES = {"dehib": "deneb", "carlini": "interpolation", "turner": "clean_label_turner", "lc": "label_consistent"}
#: how reports (LaTeX tables, figure legends) name each attack; see :func:`display_name`
DISPLAY_NAMES = {
    "badnets": "BadNets", "blended": "Blended", "cl_badnets": "CL-BadNets", "clean_label": "Clean-label",
    "clean_label_turner": "Clean-label (Turner)", "deneb": "DeNeB", "freq": "Freq", "interpolation": "Interpolation",
    "label_consistent": "Label-consistent", "mosaic": "Mosaic", "narcissus": "Narcissus", "wanet": "WaNet",
}


def display_name(name: str) -> str:
    """The name reports print for the attack registered as ``name`` (the name itself if unknown)."""
    return DISPLAY_NAMES.get(name, name)


def attack_class(name: str) -> Type[Attack]:
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise ConfigError(f"unknown attack '{name}'; choose one of {', '.join(sorted(ATTACKS))}.")
    return ATTACKS[key]


def build_attack(name: str, **kwargs: Any) -> Attack:
    """Build the attack ``name`` with its constructor options ``kwargs``."""
    cls = attack_class(name)
    accepted = set(cls.options())
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"attack '{cls.name}' does not take option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(sorted(accepted))}."
        )
    return cls(**kwargs)


def build_attack_from_spec(spec: Dict[str, Any], progress: bool = True):
    """An attack from ``{name: ..., **options}`` or ``{class_path: ..., init_args: {...}}``."""
    if not isinstance(spec, dict) or not spec:
        raise ConfigError("the config needs an 'attack' mapping, e.g. attack: {name: deneb, target: 0}.")
    spec = dict(spec)
    if "class_path" in spec:
        path = str(spec.pop("class_path"))
        kwargs = dict(spec.pop("init_args", {}) or {})
        if spec:
            raise ConfigError(f"attack with class_path takes only init_args, got extra keys {sorted(spec)}.")
        if "." in path:  # only a registered attack class, never an arbitrary import (see names.py)
            name = resolve(path, {f"{c.__module__}.{c.__qualname__}": c for c in ATTACKS.values()},
                           "attack class_path", Attack).name
        else:
            name = attack_class(path).name
    else:
        if "name" not in spec:
            raise ConfigError("the attack mapping needs a 'name' (e.g. deneb) or a 'class_path'.")
        name = str(spec.pop("name"))
        kwargs = spec
    kwargs.setdefault("progress", progress)
    return build_attack(name, **kwargs)
