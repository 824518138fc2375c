"""Narcissus (Zeng et al., CCS 2023), clean-label, as used by BI (001, App. B.2.3).

A full-image additive trigger ``delta`` with ``||delta||_inf <= eps`` (16/255) is optimised on the
surrogate so that target-class images carrying it are classified as the target with the highest
confidence: minimise ``sum_x CE(f(clip(x + delta)), target)`` over the attacker's target-class
images (the labeled target-class images plus the chosen unlabeled ones). Signed-gradient steps on
``delta`` (mini-batches of ``batch_size`` drawn with the attack's seeded generator), projection
onto the eps-ball after every step. The poisons are the chosen target-class unlabeled images plus
``delta``; at test time the trigger is magnified ``test_multiplier`` (3) times, which is what the
returned :class:`~lightning_ssl_backdoor.triggers.NoiseTrigger` applies.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lightning_ssl_backdoor.attacks.adversarial import frozen, model_device
from lightning_ssl_backdoor.attacks.base import Poisons, quantize_within
from lightning_ssl_backdoor.attacks.clean_label import CleanLabelAttack
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.triggers import NoiseTrigger


def optimise_noise_trigger(
    model: torch.nn.Module,
    images: torch.Tensor,
    target: int,
    eps: float,
    steps: int,
    step_size: float,
    batch_size: int,
    generator: torch.Generator,
    progress: bool = True,
) -> torch.Tensor:
    """The Narcissus trigger ``delta`` (``[C, H, W]``, |delta| <= eps) for float ``images``."""
    dev = model_device(model)
    delta = torch.zeros(images.shape[1:], device=dev)
    n = len(images)
    b = min(batch_size, n)
    order = [torch.randperm(n, generator=generator)[:b] for _ in range(steps)]
    with frozen(model):
        for s in tqdm(range(steps), desc="narcissus", disable=not progress, leave=False):
            x = images[order[s]].to(dev)
            delta.requires_grad_(True)
            tgt = torch.full((len(x),), target, dtype=torch.long, device=dev)
            loss = F.cross_entropy(model((x + delta).clamp(0.0, 1.0)), tgt, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = (delta - step_size * grad.sign()).clamp(-eps, eps)
    return delta.detach().cpu()


class NarcissusAttack(CleanLabelAttack):
    """Narcissus: see the module docstring. Extra args: ``eps``, ``steps``, ``step_size`` (default
    eps/10), ``batch_size``, ``test_multiplier``."""

    name = "narcissus"
    requires_model = True
    default_budget = {"budget_rate": 0.002}
    default_trigger = None

    def __init__(
        self,
        *,
        eps: float = 16.0 / 255.0,
        steps: int = 200,
        step_size: Optional[float] = None,
        batch_size: int = 64,
        test_multiplier: float = 3.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.trigger is not None:
            raise ConfigError("narcissus optimises its own trigger; remove the trigger option.")
        if not 0 < float(eps) <= 1 or int(steps) < 1 or int(batch_size) < 1:
            raise ConfigError("narcissus needs 0 < eps <= 1, steps >= 1 and batch_size >= 1.")
        self.eps, self.steps, self.batch_size = float(eps), int(steps), int(batch_size)
        self.step_size = None if step_size is None else float(step_size)
        self.test_multiplier = float(test_multiplier)

    def build_trigger(self, image_shape):
        return None  # optimised in craft

    def craft(self, split, pool, chosen, model, trigger, generator) -> Poisons:
        x = pool.float()[chosen]
        known = split.labeled.float()[split.labeled.labels == self.target]
        images = torch.cat([known, x])
        step = self.eps / 10 if self.step_size is None else self.step_size
        delta = optimise_noise_trigger(model, images, self.target, self.eps, self.steps, step,
                                       self.batch_size, generator, self.progress)
        trig = NoiseTrigger(delta, eps=self.eps, multiplier=self.test_multiplier)
        poisons = quantize_within(trig.apply_scaled(x, 1.0), pool.images[chosen], self.eps)
        return Poisons(images=poisons, sources=chosen, true_labels=pool.targets[chosen], trigger=trig,
                       info={"num_trigger_images": int(len(images))})
