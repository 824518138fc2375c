"""One look for every figure of a report: a fixed style per row, display names, sizes, saving.

**Rows and their style.** A row of a report is an (algorithm, attack, defense) triple (its seeds are
drawn together, as the mean with a ±std band). :class:`StyleMap` gives each row one colour, one
line style and one marker, computed once from all the rows of the report, so a row looks the same
in every panel of every figure. The three parts of a row are the three factors: the factor with
the most levels (the defenses, in a defense grid) picks the colour, the next one the line style,
the last one the marker; each level keeps its channel value, so "NAD" is the same colour under
every attack and "BadNets" the same dash under every defense. A channel no factor takes follows the
colour factor too (redundant coding: rows of equal values drawn over each other stay visible). A part that never varies in the
report gets no channel and is left out of the row's name (it goes into the figure's title).

**Legends.** One legend per figure, above the panels (outside the data). Up to
:data:`ROW_LEGEND_MAX` rows are listed one by one; larger grids get the factorised legend (colour =
defense, dash = attack, marker = algorithm), which names every row just as well in fewer entries.

**Sizes.** Figures are drawn at their print width, :data:`TWO_COLUMN` (7 in, a full page width) or
:data:`ONE_COLUMN` (3.3 in, one column of a two-column paper), with text of at least
:data:`MIN_FONT` points at that width. PDFs are vector (TrueType fonts embedded), PNGs are drawn at
:data:`DPI` for the Markdown report. Every file is written atomically.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from lightning_ssl_backdoor.data.artifacts import atomic_write  # noqa: E402

DPI = 200
ONE_COLUMN, TWO_COLUMN = 3.3, 7.0  # inches
FONT, MIN_FONT = 7.0, 6.0  # points at print size
ROW_LEGEND_MAX = 10
FACTORS = ("algorithm", "attack", "defense")
NONE_TEXT = {"algorithm": "none", "attack": "no attack", "defense": "no defense"}
# Okabe-Ito (colour-blind safe) first, then Paul Tol's muted set; the absent level (no attack, no
# defense) is always black
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#999933",
           "#332288", "#888888", "#661100", "#44AA99")
NONE_COLOR = "#000000"
DASHES = ("-", (0, (5, 1.6)), (0, (1.2, 1.4)), (0, (6, 1.5, 1.2, 1.5)), (0, (2.5, 1.2)), (0, (8, 1.5, 1.2, 1.5, 1.2, 1.5)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
RC = {"font.size": FONT, "axes.titlesize": FONT, "axes.labelsize": FONT, "xtick.labelsize": MIN_FONT + 0.5,
      "ytick.labelsize": MIN_FONT + 0.5, "legend.fontsize": MIN_FONT + 0.5, "lines.linewidth": 1.2,
      "lines.markersize": 3.5, "pdf.fonttype": 42, "ps.fonttype": 42, "axes.linewidth": 0.6,
      "grid.linewidth": 0.4, "figure.constrained_layout.use": True}
# reference lines in the panels: the trigger on the no-attack model, and a classifier guessing
BASE_RATE_LINE = {"color": "#555555", "linestyle": (0, (4, 2)), "linewidth": 0.9}
CHANCE_LINE = {"color": "#999999", "linestyle": (0, (1, 1.5)), "linewidth": 0.9}

RowKey = tuple  # (algorithm, attack, defense) labels as the rows carry them (None: no attack / defense)


def row_key(row: Mapping[str, Any]) -> RowKey:
    return row["algorithm"], row["attack"], row["defense"]


def row_gid(key: RowKey) -> str:
    """The id every artist drawing row ``key`` carries (``artist.get_gid()``), so a figure can be
    checked for which row each line, band, bar or point belongs to."""
    return "row:" + "|".join("" if part is None else str(part) for part in key)


@dataclass
class Names:
    """Display names of the labels rows carry (``{"attack": {"clean_label": "Clean-label"}, ...}``,
    filled by the pipeline from the components' registries); a label without one is shown as is."""

    table: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __call__(self, factor: str, label: Optional[str]) -> str:
        if label is None:
            return NONE_TEXT[factor]
        return self.table.get(factor, {}).get(label, label)


@dataclass(frozen=True)
class RowStyle:
    color: str
    linestyle: Any
    marker: str

    def line(self) -> dict[str, Any]:
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker}


class StyleMap:
    """The style of every row of a report (see the module docstring); ``keys`` in report order."""

    def __init__(self, keys: Iterable[RowKey], names: Optional[Names] = None) -> None:
        self.keys: list[RowKey] = list(dict.fromkeys(tuple(k) for k in keys))
        self.names = names or Names()
        self.levels = {f: list(dict.fromkeys(k[i] for k in self.keys)) for i, f in enumerate(FACTORS)}
        varying = [f for f in FACTORS if len(self.levels[f]) > 1]
        # most levels first; ties: defense, then attack, then algorithm
        ranked = sorted(varying, key=lambda f: (-len(self.levels[f]), -FACTORS.index(f)))
        self.channels = dict(zip(ranked, ("color", "linestyle", "marker")))
        self.constant = [f for f in FACTORS if f not in varying]

    def _value(self, factor: str, level: Optional[str], channel: str) -> Any:
        i = self.levels[factor].index(level)
        if channel == "color":
            if level is None and factor != "algorithm":
                return NONE_COLOR
            j = i - (None in self.levels[factor][:i])  # the absent level takes no palette slot
            return PALETTE[j % len(PALETTE)]
        return (DASHES if channel == "linestyle" else MARKERS)[i % (len(DASHES) if channel == "linestyle" else len(MARKERS))]

    def __getitem__(self, key: RowKey) -> RowStyle:
        key = tuple(key)
        if key not in self.keys:
            raise KeyError(f"row {key} is not in this report")
        values = {"color": PALETTE[0], "linestyle": DASHES[0], "marker": MARKERS[0]}
        lead = next(iter(self.channels), None)  # the colour factor also picks any channel left over,
        if lead is not None:                    # so lines of equal value still show each other
            for channel in ("linestyle", "marker"):
                values[channel] = self._value(lead, key[FACTORS.index(lead)], channel)
        for i, f in enumerate(FACTORS):
            if f in self.channels:
                values[self.channels[f]] = self._value(f, key[i], self.channels[f])
        return RowStyle(values["color"], values["linestyle"], values["marker"])

    def label(self, key: RowKey, parts: Optional[Iterable[str]] = None) -> str:
        """The row's name: the display names of the parts that vary in the report."""
        parts = [f for f in (parts or FACTORS) if f not in self.constant]
        text = [self.names(f, key[FACTORS.index(f)]) for f in parts]
        return " / ".join(text) if text else self.names("algorithm", key[0])

    def common(self) -> str:
        """What every row shares ("FixMatch, no defense"): for a figure's title."""
        return ", ".join(self.names(f, self.levels[f][0]) for f in self.constant)

    def _legend_entries(self, width: float, keys, extra, ncol, hide) -> tuple[list[tuple], int]:
        """The legend's (handle, label) entries in matplotlib's column-major order, and its columns."""
        keys = [k for k in self.keys if keys is None or k in set(map(tuple, keys))]
        blank = Line2D([], [], linestyle="none")
        groups: list[list[tuple]] = []
        if len(keys) <= ROW_LEGEND_MAX:
            parts = [f for f in FACTORS if f not in hide]
            groups.append([(Line2D([], [], **self[k].line()), self.label(k, parts)) for k in keys] + list(extra or []))
        else:
            for f, channel in self.channels.items():
                if f in hide:
                    continue
                shown = list(dict.fromkeys(k[FACTORS.index(f)] for k in keys))
                group = [(blank, f"{f} ({'colour' if channel == 'color' else 'dash' if channel == 'linestyle' else 'marker'}):")]
                taken = set(self.channels.values())
                for level in shown:
                    v = self._value(f, level, channel)
                    kw = {"color": v if channel == "color" else "#333333",
                          "linestyle": v if channel == "linestyle" else ("-" if channel == "color" else "none"),
                          "marker": v if channel == "marker" else None}
                    if channel == "color":  # the channels it picks redundantly
                        kw.update({c: self._value(f, level, c) for c in ("linestyle", "marker") if c not in taken})
                    group.append((Line2D([], [], **kw), self.names(f, level)))
                groups.append(group)
            if extra:
                groups.append([(blank, "reference lines:")] + list(extra))
        groups = [g for g in groups if g]
        if not groups:
            return [], 0

        def col_width(chunk: list[tuple]) -> float:
            return max(len(lab) for _, lab in chunk) * 0.052 + 0.5

        if ncol is not None or len(groups) == 1:  # one list: matplotlib fills the columns
            entries = [e for g in groups for e in g]
            if ncol is not None:
                return entries, ncol
            cols = len(entries)
            while cols > 1 and col_width(entries) * cols > width:
                cols -= 1
            return entries, cols
        # a factorised legend: each factor in its own column(s), never split across two
        height = min(max(len(g) for g in groups), 6)
        while True:
            chunks = [g[i:i + height] for g in groups for i in range(0, len(g), height)]
            if sum(col_width(c) for c in chunks) <= width or height >= max(len(g) for g in groups):
                break
            height += 1
        return [e for c in chunks for e in c + [(blank, "")] * (height - len(c))], len(chunks)

    def legend_height(self, width: float, keys: Optional[Iterable[RowKey]] = None, extra: Optional[list] = None,
                      ncol: Optional[int] = None, hide: tuple[str, ...] = ()) -> float:
        """Inches the legend of :meth:`legend` takes above the panels (for the figure's height)."""
        entries, cols = self._legend_entries(width, keys, extra, ncol, hide)
        lines = -(-len(entries) // cols) if cols else 0
        return 0.3 + 0.155 * lines

    def legend(self, fig, keys: Optional[Iterable[RowKey]] = None, extra: Optional[list] = None,
               ncol: Optional[int] = None, title: str = "", hide: tuple[str, ...] = ()) -> None:
        """One legend for ``fig``, above its panels: the rows ``keys`` (default: all) one by one,
        or factorised when there are more than :data:`ROW_LEGEND_MAX`; ``extra`` (handle, label)
        pairs (reference lines, metrics) go after them. Its title: ``title``, then what every row
        of the report shares (:meth:`common`). ``hide``: factors the figure shows otherwise (its
        panels' titles), left out of a factorised legend."""
        entries, cols = self._legend_entries(fig.get_figwidth(), keys, extra, ncol, hide)
        if not entries:
            return
        heading = "; ".join(t for t in (title, self.common()) if t)
        fig.legend([h for h, _ in entries], [lab for _, lab in entries], loc="outside upper center", ncol=cols,
                   frameon=False, title=heading or None, title_fontsize=MIN_FONT + 1, handlelength=2.6,
                   columnspacing=1.0, handletextpad=0.5, borderaxespad=0.2)


def reference_handles(base_rate: bool = True, chance: Optional[float] = None) -> list:
    """Legend entries of the reference lines drawn in the panels."""
    out = []
    if base_rate:
        out.append((Line2D([], [], **BASE_RATE_LINE), "base rate (no-attack model)"))
    if chance is not None:
        out.append((Line2D([], [], **CHANCE_LINE), f"chance ({chance:.0f}%)"))
    return out


def percent_axis(ax, axis: str = "y", label: str = "") -> None:
    """0-100 % with a unit in the label."""
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, 100)
    (ax.set_yticks if axis == "y" else ax.set_xticks)([0, 25, 50, 75, 100])
    if label:
        (ax.set_ylabel if axis == "y" else ax.set_xlabel)(label)
    ax.grid(alpha=0.3, axis=axis)


def styled(draw):
    """Decorator: run a figure function under the report's rc settings (fonts, constrained layout),
    which matplotlib reads as each artist is made."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return draw(*args, **kwargs)
    return wrapper


def save_figure(fig, path: Path, png: bool = True) -> Path:
    """Write ``fig`` as ``path`` (PNG at :data:`DPI`, when ``png``) and the vector PDF beside it, at
    the figure's own size (no cropping: the layout keeps every label inside); return ``path``."""
    path = Path(path)
    try:
        with plt.rc_context(RC):
            targets = ((path, "png"),) if png else ()
            for target, fmt in targets + ((path.with_suffix(".pdf"), "pdf"),):
                # no creation date in the PDF: the same report draws the same bytes
                meta = {"CreationDate": None} if fmt == "pdf" else None
                atomic_write(target, lambda fh, fmt=fmt, meta=meta: fig.savefig(fh, format=fmt, dpi=DPI, metadata=meta))
    finally:
        plt.close(fig)
    return path
