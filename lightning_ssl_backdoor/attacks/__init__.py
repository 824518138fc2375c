"""Attack library: ``Attack.poison(split, model=None) -> PoisonedSplit``.

Unlabeled-set attacks: ``clean_label``, ``clean_label_turner``, ``deneb``, ``interpolation``
(Carlini), ``mosaic``, ``freq``, ``cl_badnets``, ``narcissus``. Labeled-set attacks: ``badnets``,
``blended``, ``wanet``, ``label_consistent``. ``build_attack(name, **kwargs)`` builds one by name
(unknown names / options raise ConfigError); ``ATTACKS`` maps names to classes.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Type

from lightning_ssl_backdoor.attacks.base import Attack, Poisons, quantize_within
from lightning_ssl_backdoor.attacks.clean_label import (
    CLBadNetsAttack,
    CleanLabelAttack,
    FreqAttack,
    MosaicAttack,
    TurnerCleanLabelAttack,
)
from lightning_ssl_backdoor.attacks.deneb import DeNeBAttack, deneb_perturbation, sample_beta_1
from lightning_ssl_backdoor.attacks.interpolation import (
    DENSITIES,
    InterpolationAttack,
    density_cdf_fn,
    sample_alphas,
)
from lightning_ssl_backdoor.attacks.narcissus import NarcissusAttack
from lightning_ssl_backdoor.attacks.poison_label import (
    BadNetsAttack,
    BlendedAttack,
    LabelConsistentAttack,
    WaNetAttack,
)
from lightning_ssl_backdoor.errors import ConfigError

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


def attack_class(name: str) -> Type[Attack]:
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise ConfigError(f"unknown attack '{name}'; choose one of {', '.join(sorted(ATTACKS))}.")
    return ATTACKS[key]


def build_attack(name: str, **kwargs: Any) -> Attack:
    """Build the attack ``name`` with its constructor options ``kwargs``."""
    cls = attack_class(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"attack '{cls.name}' does not take option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(sorted(accepted))}."
        )
    return cls(**kwargs)


__all__ = [
    "ATTACKS",
    "Attack",
    "BadNetsAttack",
    "BlendedAttack",
    "CLBadNetsAttack",
    "CleanLabelAttack",
    "DENSITIES",
    "DeNeBAttack",
    "FreqAttack",
    "InterpolationAttack",
    "LabelConsistentAttack",
    "MosaicAttack",
    "NarcissusAttack",
    "Poisons",
    "TurnerCleanLabelAttack",
    "WaNetAttack",
    "attack_class",
    "build_attack",
    "deneb_perturbation",
    "density_cdf_fn",
    "quantize_within",
    "sample_alphas",
    "sample_beta_1",
]
