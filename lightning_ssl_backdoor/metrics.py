"""Evaluation metrics: clean accuracy, attack success rate, and detection quality.

Predictions are class indices ``[N]`` (``[N, C]`` scores are reduced with ``argmax`` first).
The functions return Python floats in [0, 1]; the ``torchmetrics`` classes accumulate integer
counts whose DDP reduction is a sum, so they equal the functions on the concatenated data.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torchmetrics import Metric

from lightning_ssl_backdoor.errors import ConfigError

__all__ = [
    "AttackSuccessRate",
    "CleanAccuracy",
    "attack_success_rate",
    "auroc",
    "clean_accuracy",
    "detection_metrics",
]


def _as_labels(preds: torch.Tensor, name: str) -> torch.Tensor:
    preds = torch.as_tensor(preds)
    if preds.dim() == 2:
        preds = preds.argmax(dim=1)
    if preds.dim() != 1:
        raise ConfigError(
            f"{name} must be class indices [N] or scores [N, C], got {tuple(preds.shape)}."
        )
    return preds.long()


def _accuracy_counts(
    preds: torch.Tensor, labels: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    preds = _as_labels(preds, "preds")
    labels = _as_labels(labels, "labels").to(preds.device)
    if preds.shape != labels.shape:
        raise ConfigError(
            f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} differ in length."
        )
    return (preds == labels).sum(), torch.tensor(labels.numel(), device=preds.device)


def _asr_counts(
    triggered_preds: torch.Tensor,
    labels: torch.Tensor,
    target: int,
    clean_preds: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(number of eligible images predicted ``target`` when triggered, number eligible)."""
    triggered = _as_labels(triggered_preds, "triggered_preds")
    labels = _as_labels(labels, "labels").to(triggered.device)
    if triggered.shape != labels.shape:
        raise ConfigError(
            f"triggered_preds {tuple(triggered.shape)} and labels {tuple(labels.shape)} differ "
            "in length."
        )
    eligible = labels != int(target)
    if clean_preds is not None:
        clean = _as_labels(clean_preds, "clean_preds").to(triggered.device)
        if clean.shape != labels.shape:
            raise ConfigError(
                f"clean_preds {tuple(clean.shape)} and labels {tuple(labels.shape)} differ in "
                "length."
            )
        eligible = eligible & (clean == labels)
    hits = (eligible & (triggered == int(target))).sum()
    return hits, eligible.sum()


def _fraction(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num) / float(den) if int(den) > 0 else 0.0


def clean_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``preds`` equal to ``labels``, in [0, 1]; 0.0 for empty inputs."""
    return _fraction(*_accuracy_counts(preds, labels))


def attack_success_rate(
    triggered_preds: torch.Tensor,
    labels: torch.Tensor,
    target: int,
    clean_preds: Optional[torch.Tensor] = None,
) -> float:
    """Attack success rate in [0, 1].

    Among the test images whose true label is not ``target``: the fraction whose triggered version
    is predicted ``target``. With ``clean_preds``, only the images whose clean prediction is also
    correct count (Yan et al., TIFS 2021, Eq. 6). An empty denominator gives 0.0.
    """
    return _fraction(*_asr_counts(triggered_preds, labels, target, clean_preds))


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive), exact with ties.

    Mann-Whitney form: ``(sum of the average ranks of the positives - P (P + 1) / 2) / (P N)``,
    ranks 1..n in increasing score, tied scores sharing their average rank (a tied
    positive/negative pair counts 1/2). ``nan`` when either class is empty.
    """
    scores = torch.as_tensor(scores).detach().reshape(-1).to(torch.float64)
    positives = torch.as_tensor(positives).reshape(-1).to(device=scores.device, dtype=torch.bool)
    if scores.shape != positives.shape:
        raise ConfigError(
            f"scores ({scores.numel()}) and poison mask ({positives.numel()}) differ in length."
        )
    if torch.isnan(scores).any():
        raise ConfigError("detection scores contain NaN: fix the detector before scoring it.")
    n_pos = int(positives.sum())
    n_neg = positives.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # last 1-based rank of each distinct value
    avg_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks = avg_rank[inverse]
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def detection_metrics(
    scores: torch.Tensor,
    poison_mask: torch.Tensor,
    keep_mask: Optional[torch.Tensor] = None,
) -> Dict[str, Union[float, int, None]]:
    """Score a poison detector against the ground-truth ``poison_mask`` (bool ``[N]``).

    ``scores``: higher = more suspicious. ``keep_mask``: what the detector keeps; the flagged set is
    ``~keep_mask``. Returns ``auroc`` (``nan`` if one class is empty), ``precision`` (poisons among
    flagged; 0.0 if nothing is flagged), ``recall`` (flagged among poisons; 0.0 with no poisons),
    ``fpr`` (flagged among clean; 0.0 with no clean), ``num_flagged``, plus ``num_poison`` and
    ``num_samples``. Without ``keep_mask`` the flagged-set entries are ``None``.
    """
    poison = torch.as_tensor(poison_mask).reshape(-1).bool()
    result: Dict[str, Union[float, int, None]] = {
        "auroc": auroc(scores, poison),
        "precision": None,
        "recall": None,
        "fpr": None,
        "num_flagged": None,
        "num_poison": int(poison.sum()),
        "num_samples": int(poison.numel()),
    }
    if keep_mask is not None:
        keep = torch.as_tensor(keep_mask).reshape(-1).to(poison.device)
        if keep.dtype != torch.bool:
            raise ConfigError(f"keep_mask must be a bool tensor, got {keep.dtype}.")
        if keep.shape != poison.shape:
            raise ConfigError(
                f"keep_mask ({keep.numel()}) and poison mask ({poison.numel()}) differ in length."
            )
        flagged = ~keep
        tp = (flagged & poison).sum()
        fp = (flagged & ~poison).sum()
        result.update(
            precision=_fraction(tp, flagged.sum()),
            recall=_fraction(tp, poison.sum()),
            fpr=_fraction(fp, (~poison).sum()),
            num_flagged=int(flagged.sum()),
        )
    return result


class CleanAccuracy(Metric):
    """Accumulating ``clean_accuracy``; ``compute()`` returns a float tensor in [0, 1] (0 when
    empty)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        correct, total = _accuracy_counts(preds, labels)
        self.correct += correct.to(self.correct.device)
        self.total += total.to(self.total.device)

    def compute(self) -> torch.Tensor:
        return self.correct.double().div(self.total.clamp(min=1)).float()


class AttackSuccessRate(Metric):
    """Accumulating ``attack_success_rate`` for one ``target``.

    ``conditioned=True`` counts only images whose clean prediction is correct (Yan et al. Eq. 6)
    and then requires ``clean_preds`` in every ``update``. ``compute()`` returns a float tensor in
    [0, 1] (0 when nothing was eligible).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, target: int, conditioned: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target = int(target)
        self.conditioned = bool(conditioned)
        self.add_state("hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        triggered_preds: torch.Tensor,
        labels: torch.Tensor,
        clean_preds: Optional[torch.Tensor] = None,
    ) -> None:
        if self.conditioned and clean_preds is None:
            raise ConfigError("AttackSuccessRate(conditioned=True) needs clean_preds in update().")
        hits, total = _asr_counts(
            triggered_preds, labels, self.target, clean_preds if self.conditioned else None
        )
        self.hits += hits.to(self.hits.device)
        self.total += total.to(self.total.device)

    def compute(self) -> torch.Tensor:
        return self.hits.double().div(self.total.clamp(min=1)).float()
