"""The defense trade-off figure: what each defense costs (clean accuracy lost) against what it
leaves of the backdoor (conditioned ASR), one point per defense, one panel per attack.

For a defended row (algorithm, attack, defense) and each seed it shares with the undefended row
(algorithm, attack, no defense), CA lost = CA(undefended) - CA(defended), in percentage points
(negative: the defense gained accuracy); conditioned ASR left is the defended row's conditioned
ASR (%). A point is the mean over those seeds, its error bars ±1 std. The undefended row is drawn
at CA lost 0 as the reference, the attack's conditioned base rate (the trigger on the no-attack
model) as a dashed line and the chance level as a dotted one: a defense is good near the lower
left, and no defense can be asked to go below the base rate.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Optional

import matplotlib.pyplot as plt

from lightning_ssl_backdoor.report.style import (
    BASE_RATE_LINE, CHANCE_LINE, MIN_FONT, ONE_COLUMN, TWO_COLUMN, percent_axis, reference_handles, row_gid,
    save_figure, styled,
)
from lightning_ssl_backdoor.report.view import ReportView


def _ms(values: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def tradeoff_points(view: ReportView) -> list[dict[str, Any]]:
    """One entry per defended row with an undefended twin: its key, CA lost and conditioned ASR
    left (mean, std over the shared seeds) and how many seeds."""
    out = []
    for key in view.styles.keys:
        alg, attack, defense = key
        ref = view.groups.get((alg, attack, None))
        if attack is None or defense is None or not ref:
            continue
        ref_ca = {r["seed"]: r.get("clean_accuracy") for r in ref}
        lost, left = [], []
        for r in view.groups[key]:
            if r.get("clean_accuracy") is None or ref_ca.get(r["seed"]) is None or r.get("asr_conditioned") is None:
                continue
            lost.append(ref_ca[r["seed"]] - r["clean_accuracy"])
            left.append(r["asr_conditioned"])
        if lost:
            (x, xs), (y, ys) = _ms(lost), _ms(left)
            out.append({"key": key, "ca_lost": x, "ca_lost_std": xs, "asr_conditioned": y, "asr_conditioned_std": ys,
                        "n": len(lost)})
    return out


@styled
def tradeoff(view: ReportView, path: Path, width: float = TWO_COLUMN, png: bool = True) -> Optional[Path]:
    points = tradeoff_points(view)
    if not points:
        return None
    facets = list(dict.fromkeys(p["key"][:2] for p in points))
    ncols = min(len(facets), 2 if width <= ONE_COLUMN else 4)
    nrows = math.ceil(len(facets) / ncols)
    shown = [k for f in facets for k in ([(*f, None)] if (*f, None) in view.groups else [])
             + [p["key"] for p in points if p["key"][:2] == f]]
    has_base = any(view.base_rate(a, t) for a, t in facets)
    extra = reference_handles(base_rate=has_base, chance=view.chance)
    top = view.styles.legend_height(width, shown, extra, hide=("attack",))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, top + 0.2 + min(width / ncols, 2.4) * 0.95 * nrows),
                             squeeze=False, sharey=True)
    lo = min([0.0] + [p["ca_lost"] - (p["ca_lost_std"] or 0) for p in points])
    hi = max([0.0] + [p["ca_lost"] + (p["ca_lost_std"] or 0) for p in points])
    pad = max(1.0, 0.06 * (hi - lo))
    several_algorithms = len({f[0] for f in facets}) > 1
    for ax, (alg, attack) in zip(axes.flat, facets):
        ref = next((s for s in view.summary if (s["algorithm"], s["attack"], s["defense"]) == (alg, attack, None)), None)
        if ref is not None and ref.get("asr_conditioned") is not None:
            st = view.styles[(alg, attack, None)]
            ax.errorbar([0.0], [ref["asr_conditioned"]], yerr=ref.get("asr_conditioned_std"), marker=st.marker,
                        color=st.color, markerfacecolor="white", linestyle="none", elinewidth=0.6, capsize=1.5,
                        gid=row_gid((alg, attack, None)))
        for p in (p for p in points if p["key"][:2] == (alg, attack)):
            st = view.styles[p["key"]]
            ax.errorbar([p["ca_lost"]], [p["asr_conditioned"]], xerr=p["ca_lost_std"], yerr=p["asr_conditioned_std"],
                        marker=st.marker, color=st.color, linestyle="none", elinewidth=0.6, capsize=1.5, markersize=4,
                        gid=row_gid(p["key"]))
        rate = view.base_rate(alg, attack)
        if rate and rate.get("asr_conditioned") is not None:
            ax.axhline(rate["asr_conditioned"], **BASE_RATE_LINE)
        if view.chance is not None:
            ax.axhline(view.chance, **CHANCE_LINE)
        ax.axvline(0.0, color="#bbbbbb", linewidth=0.5, zorder=0)
        percent_axis(ax, "y")
        ax.grid(alpha=0.3, axis="both")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_title(view.names("attack", attack) + (f" ({view.names('algorithm', alg)})" if several_algorithms else ""),
                     fontsize=MIN_FONT + 1)
        ax.set_xlabel("CA lost (% points)")
    for ax in axes[:, 0]:
        ax.set_ylabel("conditioned ASR left (%)")
    for ax in list(axes.flat)[len(facets):]:
        ax.set_visible(False)
    seeds = sorted({p["n"] for p in points})
    title = (f"mean ± std over {'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''}; "
             "hollow: the undefended row")
    view.styles.legend(fig, keys=shown, extra=extra, title=title, hide=("attack",))
    return save_figure(fig, path, png=png)
