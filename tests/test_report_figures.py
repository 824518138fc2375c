"""Report figures a paper can use (issue 35): one style per row in every panel and figure, one legend
outside the data, mean ± std bands, plain and conditioned ASR with base-rate and chance lines, a
curve for every row (defended rows too), 0-100 % axes with units, legible at 3.3 and 7 in, vector
PDFs, and the defense trade-off figure."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import pytest

from lightning_ssl_backdoor.report import figures as F
from lightning_ssl_backdoor.report.style import MIN_FONT, ONE_COLUMN, TWO_COLUMN, Names, StyleMap, row_gid
from lightning_ssl_backdoor.report.tradeoff import tradeoff_points
from lightning_ssl_backdoor.report.view import ReportView, row_curve

NAMES = Names({"algorithm": {"fixmatch": "FixMatch"}, "attack": {"badnets": "BadNets", "deneb": "DeNeB"},
               "defense": {"nad": "NAD", "self-training": "Self-training"}})


def _history(ca: float, asr: float | None) -> list[dict]:
    out = []
    for step in (100, 200, 300):
        p = {"step": step, "acc": ca / 100 - 0.001 * (300 - step) / 100}
        if asr is not None:
            p.update({"asr": asr / 100, "asr_cond": asr / 200})
        out.append(p)
    return out


def make_rows() -> list[dict]:
    """A 2-seed grid: no attack, BadNets and DeNeB x no defense, NAD (a repair: its numbers differ
    from its history's end) and self-training (no history, stages in defense_info)."""
    rows = []
    for attack, defense, seed in itertools.product((None, "badnets", "deneb"), (None, "nad", "self-training"), (0, 1)):
        if attack is None and defense is not None:
            continue
        ca = 70.0 + seed - (5 if defense == "nad" else 0)
        asr = None if attack is None else (80.0 + 2 * seed if defense is None else 10.0 + seed)
        row = {"algorithm": "fixmatch", "attack": attack, "defense": defense, "seed": seed, "target": 0,
               "clean_accuracy": ca, "asr": asr, "asr_conditioned": None if asr is None else asr / 2,
               "steps": 300, "evaluated_weights": "raw", "history": [], "defense_info": {}}
        if defense == "self-training":
            row["defense_info"] = {"teacher": {"steps": 100, "test": {"acc": 0.6, "asr": 0.9, "asr_cond": 0.45}},
                                   "config": {"round_steps": 50},
                                   "rounds": [{"student": {"clean_accuracy": 65.0, "asr": 20.0, "asr_conditioned": 10.0}},
                                              {"student": {"clean_accuracy": 66.0, "asr": 15.0, "asr_conditioned": 7.5}}]}
            row["steps"] = 300
        elif defense == "nad":
            row["history"] = _history(ca + 5, 80.0 + 2 * seed)  # the undefended training, then repaired
        else:
            row["history"] = _history(ca, asr)
        if attack is None:
            row["base_rates"] = {"badnets": {"asr": 12.0 + seed, "asr_conditioned": 3.0},
                                 "deneb": {"asr": 14.0, "asr_conditioned": 4.0 + seed}}
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Every figure of the synthetic report, kept open (save_figure records instead of closing)."""
    out = tmp_path_factory.mktemp("figs")
    figs: dict[str, object] = {}

    def keep(fig, path, png=True):  # save_figure without closing the figure (the PDF only: faster)
        figs[Path(path).stem] = fig
        fig.savefig(Path(path).with_suffix(".pdf"), format="pdf")
        fig.canvas.draw()  # the layout at the figure's own dpi, for the measurements below
        return Path(path)

    mp = pytest.MonkeyPatch()
    for mod in ("lightning_ssl_backdoor.report.figures", "lightning_ssl_backdoor.report.curves",
                "lightning_ssl_backdoor.report.tradeoff"):
        mp.setattr(f"{mod}.save_figure", keep)
    try:
        paths = F.write_figures(make_rows(), out, NAMES, num_classes=4)
    finally:
        mp.undo()
    yield out, figs, paths
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


def _row_artists(fig):
    for ax in fig.axes:
        for a in itertools.chain(ax.lines, ax.patches, ax.collections):
            gid = a.get_gid()
            if gid and gid.startswith("row:"):
                yield ax, gid, a


def _color(artist) -> str:
    if isinstance(artist, matplotlib.lines.Line2D):
        c = artist.get_color()
    elif isinstance(artist, matplotlib.collections.Collection):  # a ±std band, or error bars
        c = (artist.get_facecolor() if len(artist.get_facecolor()) else artist.get_edgecolor())[0]
    else:  # a bar: its face (the hatched plain-ASR bar is the row colour, lighter) or its edge
        c = artist.get_edgecolor() if artist.get_hatch() else artist.get_facecolor()
    return matplotlib.colors.to_hex(c)


def test_each_row_has_one_colour_and_dash_in_every_panel_of_every_figure(drawn):
    _, figs, _ = drawn
    styles = ReportView(make_rows(), NAMES, 4).styles
    seen: dict[str, set] = {}
    for name, fig in figs.items():
        for ax, gid, artist in _row_artists(fig):
            seen.setdefault(gid, set()).add(_color(artist))
            if isinstance(artist, matplotlib.lines.Line2D) and artist.get_linestyle() not in ("None", "none", ""):
                key = next(k for k in styles.keys if row_gid(k) == gid)
                assert artist.get_linestyle() == matplotlib.lines.Line2D([], [], linestyle=styles[key].linestyle).get_linestyle()
    assert len(seen) == len(styles.keys)  # every row is drawn somewhere
    for key in styles.keys:
        assert seen[row_gid(key)] == {matplotlib.colors.to_hex(styles[key].color)}, key


def test_style_map_is_stable_and_one_per_row():
    rows = make_rows()
    keys = [(r["algorithm"], r["attack"], r["defense"]) for r in rows]
    a, b = StyleMap(keys, NAMES), StyleMap(keys, NAMES)
    assert [a[k] for k in a.keys] == [b[k] for k in b.keys]  # the same rows give the same map
    assert len({(a[k].color, str(a[k].linestyle), a[k].marker) for k in a.keys}) == len(a.keys)  # one per row
    # a level keeps its channel value: NAD is one colour under every attack, BadNets one dash
    assert a[("fixmatch", "badnets", "nad")].color == a[("fixmatch", "deneb", "nad")].color
    assert a[("fixmatch", "badnets", "nad")].linestyle == a[("fixmatch", "badnets", None)].linestyle
    assert a[("fixmatch", None, None)].color == "#000000"  # the undefended rows: black
    assert a.label(("fixmatch", "deneb", "nad")) == "DeNeB / NAD" and a.common() == "FixMatch"
    # 45 rows (5 attacks x 11 defenses, one algorithm, as cifar10_bi): still one style per row
    big = StyleMap(itertools.product(["f"], [None, "a", "b", "c", "d"], [None] + list("ABCDEFGHIJ")))
    assert len({(big[k].color, str(big[k].linestyle)) for k in big.keys}) == 55


def test_one_legend_above_the_panels_text_legible_nothing_clipped(drawn):
    _, figs, _ = drawn
    for name, fig in figs.items():
        if name.startswith("examples"):
            continue
        assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes), name
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        top_of_panels = max(ax.get_window_extent(renderer).y1 for ax in fig.axes if ax.get_visible())
        assert legend.y0 >= top_of_panels - 1, name  # outside the data: above every panel
        box = fig.bbox
        for text in fig.findobj(matplotlib.text.Text):
            if not text.get_visible() or not text.get_text().strip():
                continue
            assert text.get_fontsize() >= MIN_FONT, (name, text.get_text())
            ext = text.get_window_extent(renderer)
            assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1, \
                (name, text.get_text())
        assert fig.get_figwidth() in (ONE_COLUMN, TWO_COLUMN, TWO_COLUMN / 2, TWO_COLUMN * 0.75), name


def test_axes_run_0_to_100_percent_with_units(drawn):
    _, figs, _ = drawn
    for name in ("ca_asr_bars", "ca_asr_bars_1col", "curves", "curves_1col", "tradeoff", "tradeoff_1col"):
        for ax in figs[name].axes:
            if not ax.get_visible():
                continue
            horizontal = name.startswith("ca_asr_bars")
            lo, hi = ax.get_xlim() if horizontal else ax.get_ylim()
            assert (lo, hi) == (0, 100), name
        units = [ax.get_xlabel() if horizontal else ax.get_ylabel() for ax in figs[name].axes if ax.get_visible()]
        assert any(units) and all("%" in u for u in units if u), (name, units)  # the percent axis says so


def test_asr_panels_show_plain_and_conditioned_with_base_rate_and_chance(drawn):
    _, figs, _ = drawn
    curves = figs["curves"]
    titles = [ax.get_title() for ax in curves.axes]
    assert "ASR, plain (%)" in titles and "ASR, conditioned (%)" in titles
    ys = {round(line.get_ydata()[0], 2) for ax in curves.axes for line in ax.lines
          if not (line.get_gid() or "").startswith("row:") and len(set(line.get_ydata())) == 1}
    assert 25.0 in ys  # chance: 4 classes
    assert {12.5, 14.0, 3.0, 4.5} <= ys  # BadNets / DeNeB base rates (plain, conditioned), means over seeds
    bars = figs["ca_asr_bars"]
    legend = [t.get_text() for t in bars.legends[0].get_texts()]
    assert {"ASR (plain)", "ASR (conditioned)", "chance (25%)"} <= set(legend)
    hatched = [p for p in bars.axes[1].patches if p.get_hatch()]
    solid = [p for p in bars.axes[1].patches if not p.get_hatch() and (p.get_gid() or "").startswith("row:")]
    assert len(hatched) == len(solid) == 6  # plain beside conditioned for each attacked row


def test_every_row_has_its_curve_with_a_band_over_seeds(drawn):
    _, figs, _ = drawn
    curves = figs["curves"]
    gids = {gid for _, gid, _ in _row_artists(curves)}
    assert gids == {row_gid(k) for k in ReportView(make_rows(), NAMES).styles.keys}
    bands = [a for _, gid, a in _row_artists(curves) if isinstance(a, matplotlib.collections.PolyCollection)]
    assert bands  # mean ± std over the two seeds
    # self-training: teacher, then each round's student, then the final model
    st = next(r for r in make_rows() if r["defense"] == "self-training" and r["attack"] == "badnets")
    assert row_curve(st, "clean_accuracy") == [(100, 60.0), (150, 65.0), (200, 66.0), (300, 70.0)]
    # a repair: the training history, then the reported (repaired) model just after it
    nad = next(r for r in make_rows() if r["defense"] == "nad" and r["seed"] == 0 and r["attack"] == "badnets")
    assert row_curve(nad, "asr")[-1] == (312, 10.0) and row_curve(nad, "asr")[-2] == (300, 80.0)
    # no history, no stages: the final numbers, one point
    assert row_curve({**nad, "history": []}, "clean_accuracy") == [(300, 65.0)]


def test_tradeoff_points_are_ca_lost_and_conditioned_asr_left_over_seeds(drawn):
    points = {p["key"]: p for p in tradeoff_points(ReportView(make_rows(), NAMES))}
    nad = points[("fixmatch", "badnets", "nad")]
    assert nad["ca_lost"] == pytest.approx(5.0) and nad["ca_lost_std"] == pytest.approx(0.0)
    assert nad["asr_conditioned"] == pytest.approx(5.25) and nad["asr_conditioned_std"] == pytest.approx(0.5 ** 0.5 / 2, abs=1e-9)
    assert nad["n"] == 2 and len(points) == 4  # 2 attacks x 2 defenses
    out, figs, paths = drawn
    fig = figs["tradeoff"]
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["BadNets", "DeNeB"]
    assert out / "tradeoff.png" in paths and (out / "tradeoff_1col.pdf").is_file()  # its PNG: in the Markdown


def test_pdfs_are_vector(drawn):
    out, _, _ = drawn
    for name in ("ca_asr_bars", "ca_asr_bars_1col", "curves", "curves_1col", "tradeoff", "tradeoff_1col"):
        data = (out / f"{name}.pdf").read_bytes()
        assert data[:5] == b"%PDF-" and b"/Subtype /Image" not in data, name  # no raster inside
