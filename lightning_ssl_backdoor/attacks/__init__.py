"""Attack library: ``Attack.poison(split, model=None) -> PoisonedSplit``.

Unlabeled-set attacks: ``clean_label``, ``clean_label_turner``, ``deneb``, ``interpolation``
(Carlini), ``mosaic``, ``freq``, ``cl_badnets``, ``narcissus``. Labeled-set attacks: ``badnets``,
``blended``, ``wanet``, ``label_consistent``. ``build_attack(name, **kwargs)`` builds one by name
(unknown names / options raise ConfigError); ``ATTACKS`` maps names to classes
(:mod:`~lightning_ssl_backdoor.attacks.registry`).
"""

from __future__ import annotations

from lightning_ssl_backdoor.attacks.base import Attack, Poisons, quantize_within
from lightning_ssl_backdoor.attacks.clean_label import (
    CLBadNetsAttack,
    CleanLabelAttack,
    FreqAttack,
    MosaicAttack,
    TurnerCleanLabelAttack,
)
from lightning_ssl_backdoor.attacks.deneb import DeNeBAttack, deneb_perturbation, sample_beta_1
from lightning_ssl_backdoor.attacks.interpolation import DENSITIES, InterpolationAttack, density_cdf_fn, sample_alphas
from lightning_ssl_backdoor.attacks.narcissus import NarcissusAttack
from lightning_ssl_backdoor.attacks.poison_label import BadNetsAttack, BlendedAttack, LabelConsistentAttack, WaNetAttack
from lightning_ssl_backdoor.attacks.registry import ALIASES, ATTACKS, attack_class, build_attack, build_attack_from_spec

__all__ = [
    "ALIASES",
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
    "build_attack_from_spec",
    "deneb_perturbation",
    "density_cdf_fn",
    "quantize_within",
    "sample_alphas",
    "sample_beta_1",
]
