"""Rows grouped over seeds: the numbers both the tables and the figures show."""

from __future__ import annotations

import statistics
from typing import Any, Optional

METRICS = ("clean_accuracy", "asr", "asr_conditioned")


def _mean_std(values: list[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group rows by (algorithm, attack, defense): mean and std over seeds of CA and both ASRs
    (``n``: how many seeds the row ran; std is None below two)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["algorithm"], r["attack"], r["defense"]), []).append(r)
    out = []
    for (alg, att, dfn), rs in groups.items():
        s: dict[str, Any] = {"algorithm": alg, "attack": att, "defense": dfn, "seeds": [r["seed"] for r in rs],
                             "n": len(rs)}
        for m in METRICS:
            mean, std = _mean_std([r.get(m) for r in rs])
            s[m] = None if mean is None else round(mean, 2)
            s[m + "_std"] = None if std is None else round(std, 2)
        out.append(s)
    return out
