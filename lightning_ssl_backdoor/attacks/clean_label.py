"""Clean-label attacks on the unlabeled set: target-class images with the trigger added.

- ``clean_label`` (Yan et al., 000 Sec. III-C, Eq. 12): unlabeled images whose (hidden) true label
  is the target get the trigger; the adversary knows those labels (their threat model), the
  budget is a fraction of the unlabeled set (at most 1/c) or of its target-class images.
- ``clean_label_turner`` (Yan et al. Eq. 13, after Turner et al. 2019): before the trigger, an
  L-inf PGD perturbation (``eps``, ``steps``) on the surrogate pushes each image *away* from its
  true class (ascending its cross-entropy), so the model has to rely on the trigger.
- ``mosaic`` (Shejwalkar et al. 2023, BI 001 App. B.2.3): the same with the Mosaic dot grid,
  ~0.2% of the data set by default.
- ``freq`` (CTRL, BI 001): the same with the frequency trigger.
- ``cl_badnets`` (BI 001 App. B.2.3): the same with four white corner squares.
"""

from __future__ import annotations

import torch

from lightning_ssl_backdoor.attacks.adversarial import PGDOptions
from lightning_ssl_backdoor.attacks.base import Attack, Poisons, quantize_within
from lightning_ssl_backdoor.errors import ConfigError


class CleanLabelAttack(Attack):
    """Trigger on target-class unlabeled images (no perturbation, no model)."""

    name = "clean_label"
    default_budget = {"target_class_rate": 0.5}
    default_trigger = {"name": "deneb"}

    def candidates(self, split, pool) -> torch.Tensor:
        rows = self.target_rows(pool)
        if len(rows) == 0:
            raise ConfigError(
                f"{self.name} poisons target-class images, but the unlabeled set holds none of class "
                f"{self.target}; pick another target."
            )
        return rows

    def perturb(self, x: torch.Tensor, labels: torch.Tensor, model) -> torch.Tensor:
        """Hook for adversarial enhancement before the trigger (identity here)."""
        return x

    def craft(self, split, pool, chosen, model, trigger, generator) -> Poisons:
        x = pool.float()[chosen]
        true = pool.targets[chosen]
        x = self.perturb(x, true, model)
        return Poisons(images=trigger(x), sources=chosen, true_labels=true)


class TurnerCleanLabelAttack(PGDOptions, CleanLabelAttack):
    """Clean-label + Turner et al.'s adversarial enhancement (Yan et al. Eq. 13, Table II).

    ``eps`` (default 16/255), ``steps`` PGD iterations with ``step_size`` (default 2.5 eps/steps;
    :class:`~lightning_ssl_backdoor.attacks.adversarial.PGDOptions`). Pixels outside the trigger stay within eps of the clean image after quantisation.
    """

    name = "clean_label_turner"
    requires_model = True

    def perturb(self, x, labels, model):
        return self.untargeted_pgd(model, x, labels)

    def craft(self, split, pool, chosen, model, trigger, generator) -> Poisons:
        x = pool.float()[chosen]
        true = pool.targets[chosen]
        adv = quantize_within(self.perturb(x, true, model), pool.images[chosen], self.eps)
        return Poisons(images=trigger(adv.float() / 255.0), sources=chosen, true_labels=true)


class MosaicAttack(CleanLabelAttack):
    """Clean-label Mosaic (1-pixel dot grid, +25/255 on every channel)."""

    name = "mosaic"
    default_budget = {"budget_rate": 0.002}
    default_trigger = {"name": "mosaic"}


class FreqAttack(CleanLabelAttack):
    """Clean-label CTRL frequency trigger."""

    name = "freq"
    default_budget = {"budget_rate": 0.002}
    default_trigger = {"name": "frequency"}


class CLBadNetsAttack(CleanLabelAttack):
    """Clean-label BadNets with four white corner squares (BI's CL-BadNets)."""

    name = "cl_badnets"
    default_budget = {"budget_rate": 0.002}
    default_trigger = {"name": "four_corner"}
