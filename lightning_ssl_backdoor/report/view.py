"""What every figure of one report reads: the rows, their summary over seeds, one :class:`StyleMap`,
the display names, the chance level and the base rates, and each row's curve over training steps.

Built once per report (:func:`lightning_ssl_backdoor.report.figures.write_figures`), so every
figure draws a row in the same style and under the same name.

**Curves.** A row's curve is its ``history`` (the validation metrics the runner records, as shares
in [0, 1]; the EMA's where the row is evaluated on EMA weights). Where the row reports another
model than the one the history ends with (a model repair: fine-tuning, pruning, NAD, ...), the
reported numbers follow as one more point, :data:`AFTER` of the steps after the last one, so the
curve ends where the table does. A defense that trains several
models outside the runner's training (self-training, Pal et al. Alg. 1) records no history but
keeps its stages in ``defense_info``: the teacher's test metrics after its ``steps``, each round's
student after ``round_steps`` more, and the final model (the row's own numbers) at the row's
``steps``; that sequence is the row's curve. A row with neither is drawn as one point, its final
numbers at its ``steps``, so every row of the report appears in the curves figure.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from lightning_ssl_backdoor.report.style import Names, RowKey, StyleMap, row_key
from lightning_ssl_backdoor.report.summary import summarize

# where a repaired model's point goes: this share of the training steps after the last one
AFTER = 0.04
# curve metric -> (history key, row / stage key); history values are shares, row values percent
CURVE_METRICS = {"clean_accuracy": ("acc", "clean_accuracy"), "asr": ("asr", "asr"),
                 "asr_conditioned": ("asr_cond", "asr_conditioned")}


def _mean(values: list[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(vals) if vals else None


def _std(values: list[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.stdev(vals) if len(vals) > 1 else None


def _changed_after_training(row: Mapping[str, Any]) -> bool:
    """Whether the row reports another model than the one its history ends with (a repair)."""
    suffix = "_ema" if row.get("evaluated_weights") == "ema" else ""
    last = row["history"][-1]
    for hist_key, row_field in CURVE_METRICS.values():
        h, v = last.get(hist_key + suffix), row.get(row_field)
        if h is not None and v is not None and abs(100.0 * h - v) > 0.011:
            return True
    return False


def row_curve(row: Mapping[str, Any], metric: str) -> list[tuple[int, float]]:
    """(step, percent) points of one row's ``metric`` (see the module docstring)."""
    hist_key, row_field = CURVE_METRICS[metric]
    history = row.get("history") or []
    if history:
        key = hist_key + ("_ema" if row.get("evaluated_weights") == "ema" else "")
        points = [(int(p["step"]), 100.0 * p[key]) for p in history if p.get(key) is not None]
        if points and row.get(row_field) is not None and _changed_after_training(row):
            last = points[-1][0]
            points.append((last + max(1, round(AFTER * last)), float(row[row_field])))
        return points
    info = row.get("defense_info") or {}
    points: list[tuple[int, float]] = []
    teacher, rounds = info.get("teacher") or {}, info.get("rounds") or []
    if rounds and "steps" in teacher and isinstance((info.get("config") or {}).get("round_steps"), int):
        step = int(teacher["steps"])
        t = (teacher.get("test") or {}).get(hist_key)
        if t is not None:
            points.append((step, 100.0 * t))
        for r in rounds:
            step += int(info["config"]["round_steps"])
            v = (r.get("student") or {}).get(row_field)
            if v is not None:
                points.append((step, float(v)))
    if row.get(row_field) is not None and row.get("steps") is not None:
        points.append((int(row["steps"]), float(row[row_field])))
    return points


@dataclass
class Band:
    """Mean and std over seeds at each step (std None where one seed has the step)."""

    steps: list[int]
    mean: list[float]
    std: list[Optional[float]]


@dataclass
class ReportView:
    rows: list[dict[str, Any]]
    names: Names = field(default_factory=Names)
    num_classes: Optional[int] = None

    def __post_init__(self) -> None:
        self.summary = summarize(self.rows)
        self.styles = StyleMap([row_key(s) for s in self.summary], self.names)
        self.groups: dict[RowKey, list[dict[str, Any]]] = {}
        for r in self.rows:
            self.groups.setdefault(row_key(r), []).append(r)

    @property
    def chance(self) -> Optional[float]:
        """Accuracy (and ASR) of a uniform guess, in percent."""
        return None if not self.num_classes else 100.0 / self.num_classes

    def band(self, key: RowKey, metric: str) -> Optional[Band]:
        per_seed = [dict(row_curve(r, metric)) for r in self.groups.get(tuple(key), [])]
        steps = sorted({s for c in per_seed for s in c})
        if not steps:
            return None
        mean = [_mean([c.get(s) for c in per_seed]) for s in steps]
        std = [_std([c.get(s) for c in per_seed]) for s in steps]
        return Band(steps, mean, std)

    def base_rate(self, algorithm: str, attack: Optional[str]) -> Optional[dict[str, float]]:
        """The attack's trigger on the no-attack model of ``algorithm``: mean ``asr`` /
        ``asr_conditioned`` over the seeds that measured it (None when none did)."""
        if attack is None:
            return None
        vals = [(r.get("base_rates") or {}).get(attack) for r in self.rows if r["algorithm"] == algorithm]
        vals = [v for v in vals if v]
        if not vals:
            return None
        return {m: _mean([v.get(m) for v in vals]) for m in ("asr", "asr_conditioned")}

    def attacks(self) -> list[tuple[str, Optional[str]]]:
        """(algorithm, attack) pairs in report order."""
        return list(dict.fromkeys((k[0], k[1]) for k in self.styles.keys))
