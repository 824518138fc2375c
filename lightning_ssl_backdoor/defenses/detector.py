"""The result every data-stage detector returns, and the one rule that turns scores into a keep mask.

A data-stage detector (Carlini 2021, Sec. 5.2-5.3; the spectral-signature and activation-clustering
baselines) scores each training example, higher = more suspicious, and proposes which examples to
keep. The scores are evaluated by AUROC against the poison mask; the keep mask by precision/recall and
by the accuracy of the model retrained on what it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["DetectionResult", "keep_mask_from_scores"]


@dataclass
class DetectionResult:
    """Per-sample suspicion ``scores`` (float ``[N]``, higher = more suspicious), a bool ``keep_mask``
    (``True`` = keep the sample for training) and free-form ``info`` (parameters, thresholds, timings).
    """

    scores: torch.Tensor
    keep_mask: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scores, torch.Tensor) or self.scores.ndim != 1:
            raise ConfigError("DetectionResult.scores must be a 1-D tensor with one score per sample.")
        if not isinstance(self.keep_mask, torch.Tensor) or self.keep_mask.dtype != torch.bool:
            raise ConfigError("DetectionResult.keep_mask must be a bool tensor (True = keep).")
        if self.keep_mask.shape != self.scores.shape:
            raise ConfigError(
                f"DetectionResult.keep_mask has shape {tuple(self.keep_mask.shape)} but scores have "
                f"shape {tuple(self.scores.shape)}; give one entry per sample in both."
            )

    @property
    def flagged(self) -> torch.Tensor:
        """Bool mask of the samples the detector proposes to remove (``~keep_mask``)."""
        return ~self.keep_mask

    @property
    def num_flagged(self) -> int:
        return int(self.flagged.sum())


def keep_mask_from_scores(
    scores: torch.Tensor,
    drop_count: Optional[int] = None,
    drop_fraction: Optional[float] = None,
    threshold: Optional[float] = None,
) -> torch.Tensor:
    """Keep mask (``True`` = keep) from suspicion scores (higher = more suspicious).

    Exactly one criterion must be given:

    * ``drop_count``: drop the ``drop_count`` highest-scoring samples;
    * ``drop_fraction``: drop the ``round(drop_fraction * N)`` highest-scoring samples;
    * ``threshold``: drop every sample whose score is ``>= threshold``.

    Ties at the cut of a count/fraction are broken by the lower index being dropped first, so the
    result is deterministic. The mask is created on ``scores.device``.
    """
    given = [c is not None for c in (drop_count, drop_fraction, threshold)]
    if sum(given) != 1:
        raise ConfigError(
            "give exactly one of drop_count, drop_fraction or threshold to turn scores into a keep mask."
        )
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    if scores.ndim != 1:
        raise ConfigError(f"scores must be a 1-D tensor, got shape {tuple(scores.shape)}.")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ConfigError("scores contain NaN; a detector must give every sample a number.")
    n = scores.shape[0]
    if threshold is not None:
        return ~(scores >= threshold)
    if drop_fraction is not None:
        if not (0.0 <= float(drop_fraction) <= 1.0):
            raise ConfigError(f"drop_fraction must lie in [0, 1], got {drop_fraction}.")
        drop_count = int(round(float(drop_fraction) * n))
    if isinstance(drop_count, bool) or int(drop_count) != drop_count or not (0 <= drop_count <= n):
        raise ConfigError(f"drop_count must be an integer in [0, {n}], got {drop_count}.")
    drop_count = int(drop_count)
    keep = torch.ones(n, dtype=torch.bool, device=scores.device)
    if drop_count:
        # stable descending sort: among equal scores the lower index comes first and is dropped first
        order = torch.sort(scores, descending=True, stable=True).indices
        keep[order[:drop_count]] = False
    return keep
