"""The curves figure: clean accuracy, plain ASR and conditioned ASR over training steps.

One row of panels per attack (the rows of the report under that attack, defended ones included),
one column per metric, and a fourth column with the hijack share where an attack records it
(triggered poisons pseudo-labelled as the target above the mask threshold, step 0 included). The
no-attack rows are drawn in every clean-accuracy panel, as the reference. Each row is its mean over
seeds with a ±std band, in its report-wide style; the ASR panels carry the attack's base rate
(dashed) and all panels the chance level (dotted). How a row's curve is found, and what stands in
for rows that record none, is in :mod:`lightning_ssl_backdoor.report.view`. A metric no row has (ASR
under a targeted attack) gets no column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np

from lightning_ssl_backdoor.report.style import (
    BASE_RATE_LINE, CHANCE_LINE, ONE_COLUMN, TWO_COLUMN, percent_axis, reference_handles, row_gid, save_figure, styled,
)
from lightning_ssl_backdoor.report.view import Band, ReportView

METRIC_TITLES = {"clean_accuracy": "clean accuracy (%)", "asr": "ASR, plain (%)",
                 "asr_conditioned": "ASR, conditioned (%)", "hijack": "poisons hijacked (%)"}


def _draw(ax, band: Optional[Band], style, gid: str) -> None:
    if band is None:
        return
    x = np.asarray(band.steps, dtype=float)
    y = np.asarray([np.nan if v is None else v for v in band.mean], dtype=float)
    if len(x) == 1:
        ax.plot(x, y, linestyle="none", marker=style.marker, color=style.color, markersize=4.5, gid=gid)
        return
    ax.plot(x, y, **style.line(), gid=gid)
    sd = np.asarray([np.nan if v is None else v for v in band.std], dtype=float)
    if np.isfinite(sd).any():
        ax.fill_between(x, y - sd, y + sd, color=style.color, alpha=0.15, linewidth=0, gid=gid)


def _hijack_band(view: ReportView, key) -> Optional[Band]:
    curves = []
    for r in view.groups[key]:
        h = r.get("history") or []
        if not any("backdoor/hijack" in p for p in h):
            continue
        start = next((p["backdoor/hijack_step0"] for p in h if "backdoor/hijack_step0" in p), None)
        c = {int(p["step"]): 100.0 * p["backdoor/hijack"] for p in h if "backdoor/hijack" in p}
        if start is not None:
            c[0] = 100.0 * start
        curves.append(c)
    steps = sorted({s for c in curves for s in c})
    if not steps:
        return None
    vals = [[c[s] for c in curves if s in c] for s in steps]
    return Band(steps, [float(np.mean(v)) for v in vals], [float(np.std(v, ddof=1)) if len(v) > 1 else None for v in vals])


def curve_facets(view: ReportView) -> list:
    """The attacks the curves figure has a row of panels for (``[None]`` without attacks)."""
    return list(dict.fromkeys(k[1] for k in view.styles.keys if k[1] is not None)) or [None]


@styled
def curves(view: ReportView, path: Path, width: float = TWO_COLUMN, png: bool = True) -> Optional[Path]:
    """At one column (``width`` <= 3.3 in) the grid is transposed: one row per metric, one column per
    attack (meant for reports of at most two attacks)."""
    keys = [k for k in view.styles.keys if view.band(k, "clean_accuracy") is not None]
    if not keys:
        return None
    attacked = list(dict.fromkeys(k[1] for k in keys if k[1] is not None))
    facets = attacked or [None]
    metrics = ["clean_accuracy"] + (["asr", "asr_conditioned"] if attacked else [])
    metrics = [m for m in metrics if any(view.band(k, m) is not None for k in keys)]  # targeted attacks: no ASR
    if any(_hijack_band(view, k) is not None for k in keys):
        metrics.append("hijack")
    has_base = bool(attacked) and any(view.base_rate(k[0], k[1]) for k in keys)
    extra = reference_handles(base_rate=has_base, chance=view.chance)
    top = view.styles.legend_height(width, keys, extra)
    narrow = width <= ONE_COLUMN
    shape = (len(metrics), len(facets)) if narrow else (len(facets), len(metrics))
    fig, grid = plt.subplots(*shape, figsize=(width, top + 0.45 + 1.45 * shape[0]), squeeze=False, sharex=True,
                             sharey=True)
    axes = grid.T if narrow else grid  # axes[facet][metric] either way
    clean_keys = [k for k in keys if k[1] is None]
    for i, attack in enumerate(facets):
        shown = [k for k in keys if k[1] == attack]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            drawn = 0
            for k in (clean_keys if metric == "clean_accuracy" and attack is not None else []) + shown:
                band = _hijack_band(view, k) if metric == "hijack" else view.band(k, metric)
                _draw(ax, band, view.styles[k], row_gid(k))
                drawn += band is not None
            if metric == "hijack" and not drawn:  # this attack records no hijack
                ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="#777777")
            if metric in ("asr", "asr_conditioned"):
                rates = [view.base_rate(a, attack) for a in dict.fromkeys(k[0] for k in shown)]
                for rate in rates:
                    if rate and rate.get(metric) is not None:
                        ax.axhline(rate[metric], **BASE_RATE_LINE)
            if view.chance is not None and metric != "hijack":
                ax.axhline(view.chance, **CHANCE_LINE)
            percent_axis(ax, "y")
            ax.grid(alpha=0.3, axis="both")
            if narrow:
                if j == 0 and attack is not None:
                    ax.set_title(view.names("attack", attack))
                if i == 0:
                    ax.set_ylabel(METRIC_TITLES[metric].replace(", ", "\n").replace(" (", "\n("))
                if j == len(metrics) - 1:
                    ax.set_xlabel("training step")
                continue
            if i == 0:
                ax.set_title(METRIC_TITLES[metric])
            if i == len(facets) - 1:
                ax.set_xlabel("training step")
        if narrow:
            continue
        if attack is not None:
            axes[i][0].set_ylabel(f"{view.names('attack', attack)}\n(%)")
        else:
            axes[i][0].set_ylabel("%")
    for ax in axes.flat:
        ax.set_xlim(left=0)
    view.styles.legend(fig, keys=keys, extra=extra, title="mean ± std over seeds (band)")
    return save_figure(fig, path, png=png)
