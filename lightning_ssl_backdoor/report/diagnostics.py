"""Why an attack worked or failed, as tables: the hijack of the triggered poisons and the base rates.

- **Hijack** (:mod:`lightning_ssl_backdoor.ssl.hijack`): the share of triggered poisons the victim
  pseudo-labels as the target with a confidence above its mask threshold, at step 0 and at the last
  evaluation. An attack whose hijack is low never got its poisons trained as the target; one with a
  high hijack and a low ASR got them trained but the victim did not learn the trigger.
- **Base rate** (:mod:`lightning_ssl_backdoor.pipeline.base_rate`): each attack's trigger pasted on
  the test images of the no-attack model, so the gain of every attacked row over it can be read.
- **Targeted trials** (Carlini 2021, Table 1): for a targeted attack each seed is one (x*, y*) trial,
  a success when x* ends up predicted as y*; the table counts successes out of the trials (with each
  trial's seed and y*) and, for a detector's rows, its mean AUROC and recall against the poison mask
  and the roughness R of the recorded prediction changes (the influence defense). When the grid has
  an ``oracle_removal`` row (the same split with every poison removed), trials whose x* that row
  already predicts as y* are marked vacuous and the genuine successes are counted without them.
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
    out += _targeted(rows)
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


REFERENCE = "oracle_removal"  # the no-poison reference row (defenses/oracle.py)


def _targeted(rows: list[dict[str, Any]]) -> list[str]:
    groups = [(k, rs) for k, rs in _group(rows).items() if any(r.get("targeted_success") is not None for r in rs)]
    if not groups:
        return []
    # seeds whose x* the victim trained WITHOUT the poisons already predicts as y*, per (algorithm, attack)
    vacuous: dict[tuple, set] = {}
    for (alg, att, dfn), rs in groups:
        if dfn == REFERENCE:
            vacuous[(alg, att)] = {r["seed"] for r in rs if (r.get("targeted_success") or 0) >= 50}
    out = ["", "## Targeted trials", "",
           "Each seed is one (x*, y*) trial, a success when x* is predicted as y* (Carlini 2021, Table 1);",
           "trials listed as seed:y*:1 (success) or 0. AUROC, recall and R (roughness of the recorded",
           "prediction changes, the influence defense) are the detector's, mean over the trials."]
    if vacuous:
        out += [f"Vacuous: trials whose x* the `{REFERENCE}` row (same split, every poison removed) already",
                "predicts as y*; genuine: the successes among the other trials."]
    out += ["", "| algorithm | attack | defense | successes | trials | AUROC | recall | R |"
            + (" vacuous | genuine |" if vacuous else ""),
            "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |" + (" --- | ---: |" if vacuous else "")]
    for (alg, att, dfn), rs in groups:
        done = [r for r in rs if r.get("targeted_success") is not None]
        wins = sum(1 for r in done if r["targeted_success"] >= 50)
        trials = " ".join(f"{r['seed']}:{r.get('target')}:{int(r['targeted_success'] >= 50)}" for r in done)
        info = [r.get("defense_info") or {} for r in rs]
        line = (f"| {alg} | {att or 'none'} | {dfn or 'none'} | {wins}/{len(done)} | {trials} | "
                f"{_ms([i.get('auroc') for i in info])} | {_ms([i.get('recall') for i in info])} | "
                f"{_ms([i.get('delta_roughness') for i in info])} |")
        if vacuous:
            ref = vacuous.get((alg, att))
            if ref is None:
                line += " n/a | n/a |"
            else:
                real = [r for r in done if r["seed"] not in ref]
                real_wins = sum(1 for r in real if r["targeted_success"] >= 50)
                line += f" {' '.join(str(x) for x in sorted(ref)) or '–'} | {real_wins}/{len(real)} |"
        out.append(line)
    return out
