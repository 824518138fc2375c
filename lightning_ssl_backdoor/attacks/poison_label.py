"""Attacks on the labeled set (DBD, 003 Sec. 5.2 and App. B.2; Pal et al., 002 Sec. 5).

Poison-label (``badnets``, ``blended``, ``wanet``): non-target labeled images get the trigger and
the label ``target``; 5% of the labeled set by default; injected by replacing the originals (the
poisoned dataset D_p = D_m u D_b of DBD Sec. 3.1), or appended with ``injection="append"``.

- ``badnets``: DBD's 2x2 random-colour square (bottom-right); Pal et al.'s 5x5 gray / RGB patch
  via ``trigger={name: badnets, size: 5, color: gray}``.
- ``blended``: alpha 0.1 blend with a pattern image or seeded noise.
- ``wanet``: the warp (k = 4, s = 0.5); additionally ``noise_rate`` (0.2) of the labeled set gets
  a noise-mode warp and keeps its true label (WaNet's cross samples); these are modified but
  not poisons (``attack["arrays"]["is_poison"]`` tells them apart; the poison mask excludes them).

Clean-label (``label_consistent``, Turner et al. 2019): target-class labeled images are pushed away
from their class by L-inf PGD on the surrogate (eps 16/255 or 32/255, 10 steps), then the trigger
is added; labels stay correct. DBD poisons 25% of the target class (2.5% of CIFAR-10).
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_ssl_backdoor.attacks.adversarial import PGDOptions
from lightning_ssl_backdoor.attacks.base import Attack, Poisons, quantize_within
from lightning_ssl_backdoor.errors import ConfigError

DBD_PATCH = {"name": "badnets", "size": 2, "color": "rgb"}


class PoisonLabelAttack(Attack):
    """Base of BadNets / Blended / WaNet: trigger + relabel non-target labeled images."""

    name = "poison_label"
    poisons_labeled = True
    default_budget = {"budget_rate": 0.05}
    default_injection = "replace"
    default_trigger = DBD_PATCH

    def candidates(self, split, pool) -> torch.Tensor:
        rows = self.non_target_rows(pool)
        if len(rows) == 0:
            raise ConfigError("the labeled set has no images outside the target class to poison.")
        return rows

    def craft(self, split, pool, chosen, model, trigger, generator) -> Poisons:
        x = pool.float()[chosen]
        return Poisons(
            images=trigger(x),
            sources=chosen,
            true_labels=pool.targets[chosen],
            labels=torch.full((len(chosen),), self.target, dtype=torch.int64),
        )


class BadNetsAttack(PoisonLabelAttack):
    name = "badnets"


class BlendedAttack(PoisonLabelAttack):
    name = "blended"
    default_trigger = {"name": "blend", "alpha": 0.1}


class WaNetAttack(PoisonLabelAttack):
    """WaNet in the poisoning setting (DBD App. B.2): ``noise_rate`` extra noise-warped images."""

    name = "wanet"
    default_trigger = {"name": "warp", "k": 4, "s": 0.5}

    def __init__(
        self,
        *,
        noise_rate: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= float(noise_rate) < 1.0:
            raise ConfigError(f"noise_rate must lie in [0, 1), got {noise_rate}.")
        self.noise_rate = float(noise_rate)

    def build_trigger(self, image_shape):
        trig = super().build_trigger(image_shape)
        if not hasattr(trig, "noise"):
            raise ConfigError("wanet needs a warp trigger (trigger: {name: warp, ...}).")
        return trig

    def craft(self, split, pool, chosen, model, trigger, generator) -> Poisons:
        base = super().craft(split, pool, chosen, model, trigger, generator)
        rest = torch.ones(len(pool), dtype=torch.bool)
        rest[chosen] = False
        rest_rows = torch.nonzero(rest).flatten()
        n_noise = min(len(rest_rows), int(round(self.noise_rate * len(pool))))
        noise_rows = torch.sort(rest_rows[torch.randperm(len(rest_rows), generator=generator)[:n_noise]]).values
        x = pool.float()[noise_rows]
        noisy = trigger.noise(x, generator=generator) if n_noise else x
        P = len(chosen)
        return Poisons(
            images=torch.cat([base.images, noisy]),
            sources=torch.cat([chosen, noise_rows]),
            true_labels=torch.cat([base.true_labels, pool.targets[noise_rows]]),
            labels=torch.cat([base.labels, pool.targets[noise_rows]]),
            is_poison=torch.cat([torch.ones(P, dtype=torch.bool), torch.zeros(n_noise, dtype=torch.bool)]),
            info={"num_noise": int(n_noise)},
        )


class LabelConsistentAttack(PGDOptions, Attack):
    """Turner et al.'s label-consistent attack on the labeled set (PGD, then the trigger)."""

    name = "label_consistent"
    poisons_labeled = True
    requires_model = True
    default_budget = {"target_class_rate": 0.25}
    default_injection = "replace"
    default_trigger = DBD_PATCH

    def candidates(self, split, pool) -> torch.Tensor:
        rows = self.target_rows(pool)
        if len(rows) == 0:
            raise ConfigError(f"the labeled set has no images of the target class {self.target}.")
        return rows

    def craft(self, split, pool, chosen, model, trigger, generator) -> Poisons:
        x = pool.float()[chosen]
        y = pool.targets[chosen]
        adv = self.untargeted_pgd(model, x, y)
        adv = quantize_within(adv, pool.images[chosen], self.eps).float() / 255.0
        return Poisons(images=trigger(adv), sources=chosen, true_labels=y, labels=y.clone())
