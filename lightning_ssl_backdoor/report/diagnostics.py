"""Why an attack worked or failed, as tables: the hijack of the triggered poisons and the base rates.

- **Hijack** (:mod:`lightning_ssl_backdoor.ssl.hijack`): the share of triggered poisons the victim
  pseudo-labels as the target with a confidence above its mask threshold, at step 0 and at the last
  evaluation. An attack whose hijack is low never got its poisons trained as the target; one with a
  high hijack and a low ASR got them trained but the victim did not learn the trigger.
- **Base rate** (:mod:`lightning_ssl_backdoor.pipeline.base_rate`): each attack's trigger pasted on
  the test images of the no-attack model, so the gain of every attacked row over it can be read.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional


def _ms(values: list[Optional[float]]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def _group(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["algorithm"], r["attack"], r["defense"]), []).append(r)
    return groups


def diagnostics_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines (empty when no row has anything to show)."""
    out: list[str] = []
    hijack = [(k, rs) for k, rs in _group(rows).items()
              if any("hijack" in (r.get("backdoor_stats") or {}) for r in rs)]
    if hijack:
        out += ["", "## Hijack of the triggered poisons", "",
                "Share (%) of the triggered poisons whose weak view the victim pseudo-labels as the target with",
                "confidence above its mask threshold, at step 0 and at the last evaluation; mean ± std over seeds.", "",
                "| algorithm | attack | defense | step 0 | last evaluation |", "| --- | --- | --- | ---: | ---: |"]
        for (alg, att, dfn), rs in hijack:
            stats = [r.get("backdoor_stats") or {} for r in rs]
            out.append(f"| {alg} | {att or 'none'} | {dfn or 'none'} | {_ms([s.get('hijack_step0') for s in stats])} | "
                       f"{_ms([s.get('hijack') for s in stats])} |")
    rates: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        for label, v in (r.get("base_rates") or {}).items():
            rates.setdefault((r["algorithm"], label), {}).setdefault("v", []).append(v)
    if rates:
        out += ["", "## Base rates", "",
                "Each attack's trigger pasted on the test images of the no-attack model (ASR it gets without any",
                "poisoning); an attacked row's backdoor is its gain over this; mean ± std over seeds.", "",
                "| algorithm | trigger of | ASR (%) | ASR cond. (%) |", "| --- | --- | ---: | ---: |"]
        for (alg, label), d in rates.items():
            out.append(f"| {alg} | {label} | {_ms([v.get('asr') for v in d['v']])} | "
                       f"{_ms([v.get('asr_conditioned') for v in d['v']])} |")
    return out
