"""``defense: influence``: Carlini's training-dynamics defense (Carlini 2021, Sec. 5.3, Fig. 7).

Stages, cached under ``ctx.stage_dir``:

1. ``record/``: the row's algorithm trains once on the attacked split through the runner's resumable
   ``ctx.train`` while :class:`~lightning_ssl_backdoor.defenses.dynamics.TrainingDynamicsRecorder`
   stores the softmax prediction of every unlabeled example every ``every_n_steps`` steps, or once
   per epoch (``every_n_steps: epoch``: one pass over the attacked unlabeled set, ``ceil(N_u /
   (batch_size * mu))`` steps, as Sec. 5.3 records "after every epoch"), with the EMA weights when
   ``use_ema`` (``record/dynamics.npz``; reused when present);
2. :func:`~lightning_ssl_backdoor.defenses.influence.influence_scores` turns the ``[K, N, C]``
   history into each example's average influence of its ``k`` nearest neighbours; the lowest
   (most suspicious) are dropped by ``drop_count``, ``drop_fraction`` or ``threshold``;
3. the runner retrains the row's algorithm on what is kept (:meth:`DataDefense.run`).

``defense_info`` holds the detection metrics against the poison mask (AUROC, precision, recall and
FPR of the cut), the scores themselves (``scores_file``: ``influence_scores.npz`` in the stage
folder, the influence and the poison mask, which the report pools into one Fig. 7 histogram over
every trial), whether every poison ranks below the 5th percentile of the clean influence scores
(Sec. 5.3: "perfectly separates"), summary statistics of both groups, the recording model's test
metrics and the path of the Fig. 7 histogram. :func:`dynamics_diagnostics` adds whether the recording
suits the one-record lag at all (pooled roughness ``R`` of the prediction changes, with a warning above
1, and the poisons' self-influence against the clean cut). For an attacked split it also records how far the
attacker's label spread along the poisons in the recording run (``poison_target_share``: the share of
poisons whose last recorded prediction is the attack's target; Carlini Sec. 3.3 / 4.4, the label
"propagates only part of the way" when the attack gets stuck), so a failed attack can be told
apart from a failed detector.

This module also holds :func:`filter_unlabeled` (drop unlabeled examples while keeping every field
of a :class:`PoisonedSplit` consistent) and :func:`detection_info`, shared with the clustering
defense.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.data.artifacts import load_arrays, save_arrays
from lightning_ssl_backdoor.data.split import PoisonedSplit
from lightning_ssl_backdoor.defenses.base import DataDefense, DefenseContext, register_defense
from lightning_ssl_backdoor.defenses.dynamics import TrainingDynamicsRecorder
from lightning_ssl_backdoor.defenses.influence import (
    check_lag,
    delta_roughness,
    influence_detect,
    plot_influence_histogram,
    self_influence,
)
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.metrics import detection_metrics

__all__ = [
    "InfluenceDefense", "filter_pool", "filter_unlabeled", "detection_info", "dynamics_diagnostics", "poison_mask_of",
    "separation_stats",
]


# --------------------------------------------------------------------------------------------------
# helpers shared by the data-stage defenses
# --------------------------------------------------------------------------------------------------


def poison_mask_of(split: SSLSplit) -> torch.Tensor:
    """Bool mask of the unlabeled poisons (all ``False`` for a clean split)."""
    mask = getattr(split, "unlabeled_poison_mask", None)
    if mask is None:
        return torch.zeros(len(split.unlabeled), dtype=torch.bool)
    return mask.detach().cpu().bool()


def filter_unlabeled(split: SSLSplit, keep: torch.Tensor) -> SSLSplit:
    """A copy of ``split`` whose unlabeled set holds only the rows where ``keep`` is ``True``.

    The unlabeled images, hidden true labels, source indices and poison mask are subset together;
    for an attack on the unlabeled pool, ``attack["arrays"]["position"]`` is remapped to the new
    rows (``-1`` for a removed poison) and ``attack["removed_unlabeled"]`` counts what was dropped.
    """
    keep = torch.as_tensor(keep).detach().cpu().reshape(-1)
    if keep.dtype != torch.bool:
        raise ConfigError(f"the keep mask must be a bool tensor, got {keep.dtype}.")
    return filter_pool(split, keep, "unlabeled", "lower its drop count, fraction or threshold")


def filter_pool(split: SSLSplit, keep: torch.Tensor, pool: str, hint: str) -> SSLSplit:
    """A copy of ``split`` whose ``pool`` set ("unlabeled" or "labeled") keeps only the rows where the
    bool mask ``keep`` is ``True``: images, labels, source indices and poison mask together; an
    attack on that pool has its poisons' ``position`` remapped (``-1`` for a removed poison) and
    ``attack["removed_<pool>"]`` counts what was dropped. ``hint`` ends the error for an empty pool."""
    keep = torch.as_tensor(keep).detach().cpu().reshape(-1).bool()
    n = len(getattr(split, pool))
    if keep.numel() != n:
        raise ConfigError(f"the keep mask has {keep.numel()} entries but the {pool} set has {n} images.")
    if not bool(keep.any()):
        raise ConfigError(f"the defense would remove every {pool} image; {hint}.")
    idx = torch.nonzero(keep).flatten()
    changes: dict[str, Any] = {pool: getattr(split, pool).subset(idx),
                               f"{pool}_indices": getattr(split, f"{pool}_indices")[idx].clone()}
    if isinstance(split, PoisonedSplit):
        changes[f"{pool}_poison_mask"] = getattr(split, f"{pool}_poison_mask")[idx].clone()
        attack = dict(split.attack or {})
        arrays = attack.get("arrays")
        if attack.get("pool", "unlabeled") == pool and arrays and "position" in arrays:
            new_row = torch.full((n,), -1, dtype=torch.int64)
            new_row[idx] = torch.arange(idx.numel())
            pos = torch.as_tensor(arrays["position"]).long().reshape(-1)
            valid = (pos >= 0) & (pos < n)
            remapped = torch.full_like(pos, -1)
            remapped[valid] = new_row[pos[valid]]
            attack["arrays"] = {**arrays, "position": remapped}
        attack["info"] = copy.deepcopy(attack.get("info", {}))
        attack[f"removed_{pool}"] = int(n - idx.numel())
        changes["attack"] = attack
    return replace(split, **changes)


def separation_stats(influence: torch.Tensor, poison: torch.Tensor, percentile: float = 5.0) -> dict[str, Any]:
    """Influence of poisons vs clean examples: whether every poison lies below the clean
    ``percentile``-th percentile, the rank of the worst poison, and each group's summary values."""
    inf = influence.detach().double().cpu().numpy().reshape(-1)
    pm = poison.detach().cpu().numpy().astype(bool).reshape(-1)
    out: dict[str, Any] = {"percentile": percentile}
    clean, bad = inf[~pm], inf[pm]
    if clean.size:
        cut = float(np.percentile(clean, percentile))
        out.update(clean_influence_percentile=cut, clean_influence_median=float(np.median(clean)),
                   clean_influence_mean=float(clean.mean()))
    if bad.size:
        out.update(poison_influence_max=float(bad.max()), poison_influence_mean=float(bad.mean()),
                   poison_influence_median=float(np.median(bad)))
    if clean.size and bad.size:
        out["all_poisons_below_percentile"] = bool(bad.max() < out["clean_influence_percentile"])
        # fraction of poisons below the clean percentile, and the highest rank (1 = lowest) a poison takes
        out["poisons_below_percentile"] = float((bad < out["clean_influence_percentile"]).mean())
        order = np.argsort(inf, kind="stable")
        ranks = np.empty(inf.size, dtype=np.int64)
        ranks[order] = np.arange(1, inf.size + 1)
        out["worst_poison_rank"] = int(ranks[pm].max())
    else:
        out["all_poisons_below_percentile"] = None
    return out


def dynamics_diagnostics(history: torch.Tensor, influence: torch.Tensor, poison: torch.Tensor,
                         percentile: float = 5.0) -> dict[str, Any]:
    """Whether the recording suits Sec. 5.3's one-record lag, with a warning when it does not.

    ``delta_roughness`` (pooled ``R``, see :func:`~lightning_ssl_backdoor.defenses.influence.delta_roughness`)
    needs no ground truth: above 1, consecutive per-record changes are mostly noise, so matching
    ``u_i``'s change with ``u_j``'s next one compares noise with noise. Against the poison mask, the
    poisons' :func:`~lightning_ssl_backdoor.defenses.influence.self_influence` (what an exact duplicate
    would score) is compared with the clean ``percentile``: when it is higher, a poison ranks below the
    cut only through a neighbour that repeats its changes one record later."""
    out: dict[str, Any] = {}
    if history.shape[0] >= 3:
        r = delta_roughness(history)
        out["delta_roughness"] = _clean_float(r)
        if math.isfinite(r) and r > 1.0:
            warnings.warn(
                f"the recorded prediction changes are noise-dominated (roughness R = {r:.2f}; smooth dynamics "
                "give R near 0, a random walk 2): Sec. 5.3's one-record lag then matches noise with noise, and "
                "the lowest influence goes to examples that stop changing early rather than to examples that "
                "follow one another. Carlini records one EMA model per 1,024-step epoch; cross-check with lag: 0 "
                "or defense: clustering.", RuntimeWarning, stacklevel=2)
    pm = poison.detach().cpu().bool()
    if bool(pm.any()) and bool((~pm).any()):
        si = self_influence(history).cpu()
        cut = float(np.percentile(influence.detach().double().cpu().numpy()[~pm.numpy()], percentile))
        out.update(poison_self_influence_median=float(si[pm].median()),
                   poison_self_influence_min=float(si[pm].min()),
                   poisons_self_below_percentile=float((si[pm] < cut).double().mean()))
    return out


def _clean_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def detection_info(scores: torch.Tensor, keep: torch.Tensor, poison: torch.Tensor) -> dict[str, Any]:
    """:func:`detection_metrics` of a detector (JSON-safe: NaN -> ``None``) plus kept / removed counts."""
    m = detection_metrics(scores.detach().cpu(), poison, keep.detach().cpu())
    out = {k: _clean_float(v) for k, v in m.items()}
    out["num_removed"] = int((~keep).sum())
    out["num_kept"] = int(keep.sum())
    out["poisons_kept"] = int((keep.cpu() & poison).sum())
    return out


def _check_criterion(drop_count, drop_fraction, threshold) -> None:
    given = [c is not None for c in (drop_count, drop_fraction, threshold)]
    if sum(given) > 1:
        raise ConfigError("give at most one of drop_count, drop_fraction or threshold.")
    if drop_count is not None and (isinstance(drop_count, bool) or not isinstance(drop_count, int) or drop_count < 0):
        raise ConfigError(f"drop_count must be a non-negative integer, got {drop_count!r}.")
    if drop_fraction is not None and not (isinstance(drop_fraction, (int, float)) and 0.0 <= drop_fraction < 1.0):
        raise ConfigError(f"drop_fraction must lie in [0, 1), got {drop_fraction!r}.")
    if threshold is not None and not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ConfigError(f"threshold must be a non-negative influence value, got {threshold!r}.")


def _positive_int(name: str, v: Any, allow_none: bool = False) -> Optional[int]:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}.")
    return int(v)


# --------------------------------------------------------------------------------------------------
# the defense
# --------------------------------------------------------------------------------------------------


@register_defense
class InfluenceDefense(DataDefense):
    """Record training dynamics, drop the lowest-influence unlabeled examples, retrain.

    Args:
        every_n_steps: recording interval of the unlabeled predictions in optimizer steps, or
            ``"epoch"``: one pass over the attacked unlabeled set, ``ceil(N_u / (batch_size * mu))``
            steps of the row's data settings (Sec. 5.3 records after every epoch; the FixMatch code
            Carlini used calls 1,024 steps an epoch, ~10 passes over CIFAR-10's unlabeled set at
            batch 64 x mu 7: give ``every_n_steps: 1024`` for that reading). A last record is
            always taken when training ends.
        k: neighbours averaged per example (the paper's 5).
        drop_count / drop_fraction / threshold: the cut, at most one (default ``drop_fraction=0.05``):
            drop that many / that fraction of the lowest-influence examples, or every example whose
            average influence is ``<= threshold``.
        record_steps: length of the recording run (default: the row's ``trainer.max_steps``).
        use_ema: record the EMA weights' predictions (when the algorithm keeps an EMA).
        percentile: the clean-score percentile the separation check compares against (5).
        figure: write the Fig. 7 histogram (``influence_hist.png`` in the stage folder).
        lag: 1 (default, Sec. 5.3: ``u_j`` repeats ``u_i``'s change one record later) or 0 (a
            diagnostic variant, not the paper's: examples that change in the same record are close;
            see :func:`~lightning_ssl_backdoor.defenses.influence.influence_vectors`).
    """

    name = "influence"

    def __init__(
        self,
        every_n_steps: int | str = 10,
        k: int = 5,
        drop_count: Optional[int] = None,
        drop_fraction: Optional[float] = None,
        threshold: Optional[float] = None,
        record_steps: Optional[int] = None,
        use_ema: bool = False,
        percentile: float = 5.0,
        figure: bool = True,
        lag: int = 1,
    ) -> None:
        self.every_n_steps = every_n_steps if every_n_steps == "epoch" else _positive_int(
            "influence every_n_steps (a number of steps or 'epoch')", every_n_steps)
        self.k = _positive_int("influence k", k)
        self.record_steps = _positive_int("influence record_steps", record_steps, allow_none=True)
        _check_criterion(drop_count, drop_fraction, threshold)
        if drop_count is None and drop_fraction is None and threshold is None:
            drop_fraction = 0.05
        if not (isinstance(percentile, (int, float)) and 0 < percentile < 100):
            raise ConfigError(f"influence percentile must lie in (0, 100), got {percentile!r}.")
        self.drop_count, self.drop_fraction, self.threshold = drop_count, drop_fraction, threshold
        self.use_ema, self.percentile, self.figure = bool(use_ema), float(percentile), bool(figure)
        self.lag = check_lag(lag)

    # ------------------------------------------------------------------ stages
    def record_interval(self, split: SSLSplit, ctx: DefenseContext) -> int:
        """Steps between two records: ``every_n_steps``, or for ``"epoch"`` the steps of one pass
        over ``split``'s unlabeled set at the row's unlabeled batch (``batch_size * mu``)."""
        if self.every_n_steps != "epoch":
            return int(self.every_n_steps)
        per_step = int(ctx.data.batch_size) * int(ctx.data.mu)
        if per_step < 1:
            raise ConfigError("influence every_n_steps: epoch needs an unlabeled batch (data.mu >= 1); "
                              "give a number of steps instead.")
        return max(1, math.ceil(len(split.unlabeled) / per_step))

    def record(self, split: SSLSplit, ctx: DefenseContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """Stage 1 (cached): train while recording; returns the ``[K, N, C]`` history and the
        recording run's result."""
        path = Path(ctx.stage_dir) / "record" / "dynamics.npz"
        steps = self.record_steps or ctx.trainer.max_steps
        trainer = ctx.with_trainer(
            max_steps=steps,
            val_check_interval=min(ctx.trainer.val_check_interval, steps),
            checkpoint_every_n_steps=min(ctx.trainer.checkpoint_every_n_steps, steps),
        )
        recorder = TrainingDynamicsRecorder(self.record_interval(split, ctx), path, use_ema=self.use_ema)
        res = ctx.train(split, name="record", trainer=trainer, extra_callbacks=[recorder])
        if path.is_file() and path.with_suffix(".json").is_file():
            arrays, _ = load_arrays(path)
            history = torch.from_numpy(np.asarray(arrays["history"])).float()
        else:
            history = recorder.history()
        if history.ndim != 3 or history.shape[0] < 2:
            raise ConfigError(
                f"the recording run left {0 if history.ndim != 3 else history.shape[0]} records of the unlabeled "
                f"predictions; lower every_n_steps or delete {path.parent} to record again."
            )
        if history.shape[1] != len(split.unlabeled):
            raise ConfigError(
                f"the stored training dynamics cover {history.shape[1]} unlabeled images but the split has "
                f"{len(split.unlabeled)}; delete {path.parent} to record again."
            )
        return history, res

    def filter(self, split: SSLSplit, ctx: DefenseContext) -> tuple[SSLSplit, dict[str, Any]]:
        history, rec = self.record(split, ctx)
        det = influence_detect(history, k=self.k, drop_fraction=self.drop_fraction,
                               drop_count=self.drop_count, threshold=self.threshold, lag=self.lag)
        influence = det.info["influence"].detach().cpu()
        keep = det.keep_mask.detach().cpu()
        poison = poison_mask_of(split)
        info: dict[str, Any] = {"method": "training_dynamics_influence"}
        info.update(detection_info(det.scores, keep, poison))
        info.update(separation_stats(influence, poison, self.percentile))
        info.update(
            k=self.k, lag=self.lag, every_n_steps=self.record_interval(split, ctx), num_records=int(history.shape[0]),
            record_every="epoch" if self.every_n_steps == "epoch" else "steps", recorded_weights="ema" if self.use_ema and rec.get("has_ema") else "raw",
            drop_count=self.drop_count, drop_fraction=self.drop_fraction, threshold=self.threshold,
            cut_influence=float(influence[~keep].max()) if bool((~keep).any()) else None,
            record={"steps": rec.get("steps"), "test": rec.get("test", {}),
                    "folder": str(Path(ctx.stage_dir) / "record")},
        )
        info.update(dynamics_diagnostics(history, influence, poison, self.percentile))
        target = getattr(split, "target", None)
        if target is not None and bool(poison.any()):
            last = history[-1].argmax(-1)[poison]
            info["poison_target_share"] = float((last == int(target)).float().mean())
        scores_file = Path(ctx.stage_dir) / "influence_scores.npz"
        save_arrays(scores_file, {"influence": influence.double(), "poison": poison},
                    {"kind": "influence_scores", "k": self.k, "lag": self.lag})
        info["scores_file"] = str(scores_file)
        if self.figure:
            info["histogram"] = plot_influence_histogram(influence, poison, Path(ctx.stage_dir) / "influence_hist.png")
        return filter_unlabeled(split, keep), info
