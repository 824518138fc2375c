"""Pure tensor functions of the Backdoor Invalidator (BI, paper 001, "Filter, Obstruct and Dilute").

The paper's equations were lost in the text extraction; these functions follow the reading of
``papers/INDEX.md`` ("BI (001)"), which the authors' public code (a fork of USB) settles:

- :func:`complementary_labels`: multi-hot complementary labels. For an unlabeled image with weak-view
  probabilities ``p``, class ``k`` is marked "not this class" independently with probability
  ``(1 - p_k) * r``, ``r`` the current alignment ratio (conservative early, when ``r`` is small).
- :func:`initial_transition`, :func:`transition_statistics`, :func:`update_transition`: the
  transition matrix ``T`` (``C x C``). From one batch, ``T_batch[i, j] = 1 - mean of p_j over the
  samples assigned to class i`` (unlabeled weak-view predictions grouped by pseudo-label, labeled
  predictions grouped by label), diagonal 0. ``T`` is the running average of the batch estimates
  over iterations, per row (a row no sample was assigned to keeps its value), starting from
  ``(C - 1) / C`` off the diagonal and 0 on it; the initial matrix counts as the first estimate.
- :func:`mixup_weight`: the stage-two weight ``lam = 0.1 (1 + cos(pi it / T_total))``, 0.2 -> 0.
- :func:`check_options`: BI's options, validated (the defense's and the invalidated modules' defaults).
- :data:`ABLATIONS`: the option switches of the labelled rows that show BI's parts one by one
  (BI Table 3): ``bi``, ``bi-test-filter``, ``bi-filter-only``, ``bi-complementary-only``,
  ``bi-mixup-only``, ``bi-no-filter``.
- :func:`trigger_mixup`: labeled images mixed with confident strongly-augmented unlabeled images and
  their pseudo-labels, the labeled side weighted ``m = max(u, 1 - u) >= 0.5``, ``u ~ Beta(a, a)``.

The loss itself is :func:`lightning_ssl_backdoor.losses.complementary_loss` (forward correction
``q = softmax(logits) @ T``) with a **boolean** mask: the authors' code indexed with an integer
tensor and so used rows 0 and 1 of the batch instead of the marked entries (a bug fixed here).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError

__all__ = [
    "ABLATIONS",
    "ALIGNMENTS",
    "OPTION_NAMES",
    "batch_transition",
    "check_options",
    "complementary_labels",
    "initial_transition",
    "mixup_weight",
    "transition_statistics",
    "trigger_mixup",
    "update_transition",
]

ALIGNMENTS = ("agreement", "mask")

#: BI's parts one by one (BI Table 3), as the option switches of each row label. ``bi`` is the
#: authors' deployment (the test trigger pasted after the blur); ``bi-test-filter`` blurs the
#: triggered test images too, as a model that filters every input would.
ABLATIONS: dict[str, dict[str, bool]] = {
    "bi": {"use_filter": True, "use_complementary": True, "use_mixup": True, "filter_triggered_test": False},
    "bi-test-filter": {"use_filter": True, "use_complementary": True, "use_mixup": True, "filter_triggered_test": True},
    "bi-filter-only": {"use_filter": True, "use_complementary": False, "use_mixup": False, "filter_triggered_test": False},
    "bi-complementary-only": {"use_filter": False, "use_complementary": True, "use_mixup": False},
    "bi-mixup-only": {"use_filter": False, "use_complementary": False, "use_mixup": True},
    "bi-no-filter": {"use_filter": False, "use_complementary": True, "use_mixup": True},
}


def check_options(
    use_filter: bool = True,
    filter_radius: float = 1.0,
    filter_triggered_test: bool = False,
    use_complementary: bool = True,
    stage_one_ratio: float = 0.025,
    stage_one_steps: Optional[int] = None,
    complementary_weight: float = 1.0,
    alignment: str = "agreement",
    use_mixup: bool = True,
    trigger_mixup_alpha: float = 1.0,
    confidence_threshold: float = 0.95,
    log_transition_every: int = 100,
) -> dict[str, Any]:
    """Validate BI's options (one-sentence :class:`ConfigError`) and return them as a dict."""
    opts = dict(locals())
    for name in ("use_filter", "filter_triggered_test", "use_complementary", "use_mixup"):
        if not isinstance(opts[name], bool):
            raise ConfigError(f"{name} must be true or false, got {opts[name]!r}.")
    if not (use_filter or use_complementary or use_mixup):
        raise ConfigError("use_filter, use_complementary and use_mixup are all false, which is no defense; turn one on or drop the invalidator.")
    if not filter_radius >= 0:
        raise ConfigError(
            f"filter_radius must be >= 0 (the Gaussian's standard deviation in pixels), got {filter_radius}."
        )
    if not 0.0 <= stage_one_ratio <= 1.0:
        raise ConfigError(f"stage_one_ratio must be in [0, 1] (a fraction of max_steps), got {stage_one_ratio}.")
    if stage_one_steps is not None and int(stage_one_steps) < 0:
        raise ConfigError(f"stage_one_steps must be >= 0 or null, got {stage_one_steps}.")
    if complementary_weight < 0:
        raise ConfigError(f"complementary_weight must be >= 0, got {complementary_weight}.")
    if alignment not in ALIGNMENTS:
        raise ConfigError(f"alignment must be one of {list(ALIGNMENTS)}, got {alignment!r}.")
    if not trigger_mixup_alpha > 0:
        raise ConfigError(f"trigger_mixup_alpha must be positive, got {trigger_mixup_alpha}.")
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ConfigError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}.")
    if int(log_transition_every) < 1:
        raise ConfigError(f"log_transition_every must be >= 1, got {log_transition_every}.")
    return opts


OPTION_NAMES = tuple(inspect.signature(check_options).parameters)


def complementary_labels(
    probs: torch.Tensor, ratio: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Bool ``[B, C]``: entry ``(b, k)`` is True with probability ``(1 - probs[b, k]) * ratio``."""
    if probs.dim() != 2:
        raise ConfigError(f"probs must be a [batch, classes] tensor, got shape {tuple(probs.shape)}.")
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"the alignment ratio must be in [0, 1], got {ratio}.")
    chance = ((1.0 - probs.detach().float()) * ratio).clamp(0.0, 1.0)
    u = torch.rand(chance.shape, generator=generator, device=chance.device if generator is None else generator.device)
    return u.to(chance.device) < chance


def initial_transition(num_classes: int, device=None) -> torch.Tensor:
    """``(C - 1) / C`` off the diagonal, 0 on it."""
    if num_classes < 2:
        raise ConfigError(f"the transition matrix needs at least 2 classes, got {num_classes}.")
    t = torch.full((num_classes, num_classes), (num_classes - 1) / num_classes, device=device)
    return t.fill_diagonal_(0.0)


def transition_statistics(
    probs: torch.Tensor, assigned: torch.Tensor, num_classes: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of the predicted probabilities ``[C, C]`` (row i: samples assigned to i) and
    the per-class sample counts ``[C]`` (float64, so several batches or ranks can be summed)."""
    probs = probs.detach().to(torch.float64)
    onehot = F.one_hot(assigned.long(), num_classes).to(torch.float64)
    return onehot.t() @ probs, onehot.sum(0)


def batch_transition(sums: torch.Tensor, counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``T_batch[i, j] = 1 - sums[i, j] / counts[i]`` with a zero diagonal, and the bool ``[C]`` of
    rows that had samples (the other rows of ``T_batch`` are 0 and must not be used)."""
    present = counts > 0
    mean = sums / counts.clamp(min=1).unsqueeze(1)
    t = torch.where(present.unsqueeze(1), 1.0 - mean, torch.zeros_like(mean))
    return t.fill_diagonal_(0.0), present


def update_transition(
    transition: torch.Tensor, num_estimates: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running average per row: ``T[i] <- (n_i T[i] + T_batch[i]) / (n_i + 1)`` for the rows present
    in this batch, ``n_i`` the number of estimates averaged so far (1 for the initial matrix)."""
    t_batch, present = batch_transition(sums, counts)
    n = num_estimates.to(torch.float64)
    new = (n.unsqueeze(1) * transition.to(torch.float64) + t_batch) / (n + 1).unsqueeze(1)
    new = torch.where(present.unsqueeze(1), new, transition.to(torch.float64))
    return new.to(transition.dtype), num_estimates + present.to(num_estimates.dtype)


def mixup_weight(step: int, total_steps: int) -> float:
    """``lam = 0.1 (1 + cos(pi min(step / total, 1)))``: 0.2 at step 0, 0.1 halfway, 0 at the end."""
    if total_steps <= 0:
        raise ConfigError(f"total_steps must be positive, got {total_steps}.")
    t = min(max(step / total_steps, 0.0), 1.0)
    return 0.1 * (1.0 + math.cos(math.pi * t))


def trigger_mixup(
    x_labeled: torch.Tensor,
    y_labeled: torch.Tensor,
    x_unlabeled: torch.Tensor,
    pseudo: torch.Tensor,
    confident: torch.Tensor,
    num_classes: int,
    alpha: float = 1.0,
) -> Optional[Tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]]:
    """Mix each labeled image with a random confident unlabeled image (drawn with replacement).

    Returns ``(x_mix, y_mix, m, partners)`` with ``x_mix = m x_l + (1 - m) x_u[partners]``, the soft
    targets likewise from the one-hot label and pseudo-label, ``m = max(u, 1 - u)``,
    ``u ~ Beta(alpha, alpha)`` (one per batch); ``None`` when no unlabeled image is confident.
    """
    if alpha <= 0:
        raise ConfigError(f"trigger_mixup_alpha must be positive, got {alpha}.")
    pool = confident.nonzero().flatten()
    if len(pool) == 0:
        return None
    partners = pool[torch.randint(len(pool), (len(x_labeled),), device=pool.device)]
    u = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    m = max(u, 1.0 - u)
    y_l = F.one_hot(y_labeled.long(), num_classes).to(x_labeled.dtype)
    y_u = F.one_hot(pseudo[partners].long(), num_classes).to(x_labeled.dtype)
    x_mix = m * x_labeled + (1.0 - m) * x_unlabeled[partners]
    return x_mix, m * y_l + (1.0 - m) * y_u, m, partners
