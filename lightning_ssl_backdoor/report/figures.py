"""Report figures (matplotlib, Agg), every one drawn from the same :class:`ReportView`, so a row has
one style and one name in all of them (:mod:`lightning_ssl_backdoor.report.style`):

- ``ca_asr_bars``: per row, clean accuracy, and plain beside conditioned ASR, mean ± std over
  seeds, with each attack's base rate and the chance level (also ``ca_asr_bars_1col.pdf``, one
  column wide);
- ``curves`` (:mod:`~lightning_ssl_backdoor.report.curves`): CA and both ASRs over training steps,
  one row of panels per attack (also ``curves_1col.pdf`` for reports of at most two attacks);
- ``tradeoff`` (:mod:`~lightning_ssl_backdoor.report.tradeoff`): every defense's CA lost against the
  conditioned ASR it leaves (also ``tradeoff_1col.pdf``);
- ``asr_per_target``, the attack ``examples_*`` grids and, for rows of Carlini's training-dynamics
  defense, the influence histogram of poisons vs clean images (Fig. 7).

Each figure is a PNG (for the Markdown report) and a vector PDF beside it, written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from lightning_ssl_backdoor.data.artifacts import load_arrays  # noqa: E402
from lightning_ssl_backdoor.errors import ArtifactError  # noqa: E402
from lightning_ssl_backdoor.metrics import auroc as metric_auroc  # noqa: E402
from lightning_ssl_backdoor.report.curves import curve_facets, curves  # noqa: E402
from lightning_ssl_backdoor.report.style import (  # noqa: E402
    BASE_RATE_LINE, CHANCE_LINE, DPI, MIN_FONT, ONE_COLUMN, TWO_COLUMN, Names, percent_axis, reference_handles,
    row_gid, row_key, save_figure, styled,
)
from lightning_ssl_backdoor.report.tradeoff import tradeoff  # noqa: E402
from lightning_ssl_backdoor.report.view import ReportView  # noqa: E402

__all__ = ["DPI", "bars", "curves", "example_grid", "influence_histogram", "per_target", "plt", "save_figure",
           "tradeoff", "write_figures"]


def _bar_lines(view: ReportView) -> list[tuple[str, Optional[dict[str, Any]]]]:
    """The bands of the bar chart, top down: (label, summary row), or (heading, None) above each
    attack's rows when the rows of an attack differ by their defense (the heading names the attack,
    the rows their defense only)."""
    first: dict[tuple, int] = {}
    for s in view.summary:  # rows of one attack together (explicit ``rows`` may interleave them)
        first.setdefault((s["algorithm"], s["attack"]), len(first))
    summary = sorted(view.summary, key=lambda s: first[(s["algorithm"], s["attack"])])
    grouped = "defense" not in view.styles.constant and len(first) > 1
    if not grouped:
        return [(view.styles.label(row_key(s)), s) for s in summary]
    several = "algorithm" not in view.styles.constant
    lines: list[tuple[str, Optional[dict[str, Any]]]] = []
    for s in summary:
        alg, attack = s["algorithm"], s["attack"]
        if not lines or (lines[-1][1] or {}).get("attack", object()) != attack or lines[-1][1]["algorithm"] != alg:
            head = view.names("attack", attack)
            lines.append(((f"{view.names('algorithm', alg)}, " if several else "") + head[:1].upper() + head[1:], None))
        lines.append((view.names("defense", s["defense"]), s))
    return lines


@styled
def bars(view: ReportView, path: Path, width: float = TWO_COLUMN, png: bool = True) -> Path:
    """Horizontal bars, one band per row (grouped by attack, top down): CA on the left; plain ASR
    (hatched) beside conditioned ASR (solid) on the right, with the attack's base rates as ticks
    over the two bars and the chance level as a dotted line; error bars: ±std over seeds."""
    lines = _bar_lines(view)
    n = len(lines)
    narrow = width < TWO_COLUMN / 1.5
    gray = "#777777"
    base_line = {**BASE_RATE_LINE, "linestyle": "-", "linewidth": 1.4,
                 "path_effects": [patheffects.withStroke(linewidth=2.6, foreground="white")]}
    extra = [(Patch(facecolor=to_rgba(gray, 0.25), edgecolor=gray, hatch="//////", linewidth=0.5), "ASR (plain)"),
             (Patch(color=gray), "ASR (conditioned)"), (plt.Line2D([], [], **base_line), "base rate (no-attack model)")]
    extra += reference_handles(base_rate=False, chance=view.chance)
    top = view.styles.legend_height(width, [], extra)
    fig, (ax_ca, ax_asr) = plt.subplots(1, 2, figsize=(width, top + 0.5 + 0.19 * n), sharey=True,
                                        gridspec_kw={"width_ratios": [1, 1.3]})
    err = {"elinewidth": 0.6, "capsize": 1.5, "ecolor": "#222222"}
    for i, (_, s) in enumerate(lines):
        if s is None:
            if i:
                for ax in (ax_ca, ax_asr):
                    ax.axhline(i - 0.5, color="#bbbbbb", linewidth=0.5)
            continue
        color = view.styles[row_key(s)].color
        gid = row_gid(row_key(s))
        ax_ca.barh(i, s["clean_accuracy"] or 0, 0.7, color=color, xerr=s["clean_accuracy_std"], error_kw=err, gid=gid)
        if s["asr"] is None:
            ax_asr.text(1.5, i, "n/a (no attack)" if s["attack"] is None else "n/a (no ASR recorded)", va="center",
                        fontsize=MIN_FONT, color="#555555")
            continue
        ax_asr.barh(i - 0.18, s["asr"], 0.36, facecolor=to_rgba(color, 0.25), edgecolor=color, hatch="//////",
                    linewidth=0.5, xerr=s["asr_std"], error_kw=err, gid=gid)
        ax_asr.barh(i + 0.18, s["asr_conditioned"] or 0, 0.36, color=color, xerr=s["asr_conditioned_std"], error_kw=err,
                    gid=gid)
        base = view.base_rate(s["algorithm"], s["attack"])
        for value, lo in ((base or {}).get("asr"), -0.38), ((base or {}).get("asr_conditioned"), 0.0):
            if value is not None:
                ax_asr.plot([value, value], [i + lo, i + lo + 0.38], **base_line)
    for ax, label in ((ax_ca, "CA (%)" if narrow else "clean accuracy (%)"),
                      (ax_asr, "ASR (%)" if narrow else "attack success rate (%)")):
        percent_axis(ax, "x", label)
        if narrow:
            ax.set_xticks([0, 50, 100])
        if view.chance is not None:
            ax.axvline(view.chance, **CHANCE_LINE)
    ax_ca.set_yticks(range(n), [label for label, _ in lines])
    for tick, (_, s) in zip(ax_ca.get_yticklabels(), lines):
        if s is None:
            tick.set_fontweight("bold")
    ax_ca.set_ylim(n - 0.5, -0.5)
    ax_ca.tick_params(axis="y", length=0)
    view.styles.legend(fig, keys=[], extra=extra, title="mean ± std over seeds")
    return save_figure(fig, path, png=png)


@styled
def per_target(view: ReportView, path: Path) -> Optional[Path]:
    """ASR per target class, one line per row (rows whose seeds attack different targets)."""
    by_row: dict[tuple, dict[int, list[float]]] = {}
    for r in view.rows:
        if r.get("asr") is not None and r.get("target") is not None:
            by_row.setdefault(row_key(r), {}).setdefault(int(r["target"]), []).append(r["asr"])
    if len({t for d in by_row.values() for t in d}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(TWO_COLUMN / 2, 2.0 + view.styles.legend_height(TWO_COLUMN / 2, list(by_row), ncol=1)))
    for key, by_t in by_row.items():
        ts = sorted(by_t)
        ax.plot(ts, [float(np.mean(by_t[t])) for t in ts], **view.styles[key].line(), gid=row_gid(key))
    ax.set_xlabel("target class")
    percent_axis(ax, "y", "ASR (%)")
    view.styles.legend(fig, keys=list(by_row), ncol=1)
    return save_figure(fig, path)


@styled
def example_grid(split: Any, path: Path, n: int = 8) -> Optional[Path]:
    """Clean test images, the same images with the trigger, and poisoned unlabeled images."""
    trigger = getattr(split, "trigger", None)
    mask = getattr(split, "unlabeled_poison_mask", None)
    if trigger is None and (mask is None or not mask.any()):
        return None
    rows = []
    names = []
    clean = split.test.images[:n].float() / 255
    rows.append(clean)
    names.append("clean test")
    if trigger is not None:
        with torch.no_grad():
            rows.append(trigger(clean).clamp(0, 1))
        names.append("triggered test")
    if mask is not None and mask.any():
        idx = torch.nonzero(mask).flatten()
        kind = (getattr(split, "attack", None) or {}).get("arrays", {}).get("kind")
        if kind is not None and len(kind) == len(idx) and int(kind.max()) > int(kind.min()):
            # DeNeB-style pairs: half weakly perturbed (no trigger), half strongly perturbed + trigger
            order = torch.argsort(torch.as_tensor(kind), descending=True, stable=True)
            idx = torch.cat([idx[order[: n - n // 2]], idx[order.flip(0)[: n // 2]]])
            names.append(f"poisoned unlabeled ({n - n // 2} strong + trigger, {n // 2} weak)")
        else:
            idx = idx[:n]
            names.append("poisoned unlabeled")
        rows.append(split.unlabeled.images[idx].float() / 255)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows)), squeeze=False)
    for i, (imgs, name) in enumerate(zip(rows, names)):
        for j in range(n):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(imgs):
                im = imgs[j].permute(1, 2, 0).numpy()
                ax.imshow(im.squeeze(-1) if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None,
                          vmin=0, vmax=1, interpolation="nearest")
        axes[i][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(f"Examples: {split.attack.get('name', 'attack') if hasattr(split, 'attack') else 'attack'}, target {getattr(split, 'target', None)}", fontsize=9)
    return save_figure(fig, path)


@styled
def influence_histogram(rows: list[dict[str, Any]], path: Path, bins: int = 50) -> Optional[Path]:
    """Carlini Fig. 7 over every row whose defense kept influence scores (``defense_info
    ["scores_file"]``, :mod:`lightning_ssl_backdoor.defenses.influence_defense`): the average
    influence of the 5 nearest neighbours of poisoned vs clean unlabeled images, pooled over the
    rows (trials), log x axis, each group as a share of its own count (the poisons are ~1% of the
    images), with the pooled AUROC in the title. Rows whose file is gone (results merged from
    another machine) are skipped; ``None`` when no row has scores."""
    clean, poison, used = [], [], 0
    for r in rows:
        f = (r.get("defense_info") or {}).get("scores_file")
        if not f or not Path(f).is_file():
            continue
        try:
            arrays, _ = load_arrays(f)
        except ArtifactError:
            continue
        s = np.asarray(arrays["influence"], dtype=np.float64).reshape(-1)
        m = np.asarray(arrays["poison"]).astype(bool).reshape(-1)
        clean.append(s[~m])
        poison.append(s[m])
        used += 1
    if not used:
        return None
    c, p = np.concatenate(clean), np.concatenate(poison)
    auroc = ""
    if c.size and p.size:  # low influence = suspicious: the detector's score is the negated influence
        scores = -torch.from_numpy(np.concatenate([c, p]))
        auroc = f", AUROC {metric_auroc(scores, torch.arange(c.size + p.size) >= c.size):.3f}"
    both = np.concatenate([c, p])
    floor = both[both > 0].min() if (both > 0).any() else 1e-12
    c, p = np.maximum(c, floor), np.maximum(p, floor)
    lo, hi = float(min(c.min(initial=np.inf), p.min(initial=np.inf))), float(max(c.max(initial=0), p.max(initial=0)))
    edges = np.logspace(np.log10(lo), np.log10(hi if hi > lo else lo * 10), bins + 1)
    fig, ax = plt.subplots(figsize=(TWO_COLUMN * 0.75, 2.8))
    for vals, name, color in ((c, "clean", "#4C72B0"), (p, "poisoned", "#C44E52")):
        if vals.size:
            ax.hist(vals, bins=edges, weights=np.full(vals.size, 100.0 / vals.size), color=color, alpha=0.65,
                    label=f"{name} (n={vals.size})")
    ax.set_xscale("log")
    ax.set_xlabel("average influence of the 5 nearest neighbours (low = suspicious)")
    ax.set_ylabel("% of the group")
    ax.set_title(f"Influence of poisoned vs clean unlabeled images ({used} run{'s' if used > 1 else ''}{auroc})",
                 fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_figures(rows: list[dict[str, Any]], output: Path, names: Optional[Names] = None,
                  num_classes: Optional[int] = None) -> list[Path]:
    """Every figure of the report (the PNGs, in the order the Markdown shows them; PDFs beside
    them and the one-column PDFs ``*_1col.pdf``)."""
    view = ReportView(rows, names or Names(), num_classes)
    out = [bars(view, output / "ca_asr_bars.png"), curves(view, output / "curves.png"),
           tradeoff(view, output / "tradeoff.png"), per_target(view, output / "asr_per_target.png"),
           influence_histogram(rows, output / "influence_hist.png")]
    bars(view, output / "ca_asr_bars_1col.png", width=ONE_COLUMN, png=False)
    if out[1] is not None and len(curve_facets(view)) <= 2:  # more attacks than that: two columns wide
        curves(view, output / "curves_1col.png", width=ONE_COLUMN, png=False)
    if out[2] is not None:
        tradeoff(view, output / "tradeoff_1col.png", width=ONE_COLUMN, png=False)
    out += sorted(output.glob("examples_*.png"))
    return [p for p in out if p is not None]
