"""Report outputs of `ssl-backdoor experiment`: LaTeX table, PNG (>= 150 dpi) + PDF figures with
the usual permissions, TensorBoard runs named by row with one learning-rate curve and no placeholder
hp_metric, one meaning of the ``seeds`` column, the CSV's cells, "n/a" for a clean row's ASR;
`report merge` of --only shards equal to one run of the grid, `report render` redrawing a report
from its results.json, and malformed shards refused with one sentence."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from lightning_ssl_backdoor.cli import main

GRID = {
    "name": "grid",
    "seeds": [0, 1],
    "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 3, "batch_size": 8, "mu": 1,
             "eval_batch_size": 500},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": None},
    "trainer": {"max_steps": 2, "val_check_interval": 2, "checkpoint_every_n_steps": 2, "accelerator": "cpu",
                "log_every_n_steps": 1},
    "algorithms": [{"name": "supervised", "label": "sup_A"}],
    "attacks": [None, {"name": "badnets", "init_args": {"target": 1, "budget": 3}}],
}
TIMING = ("fit_seconds",)


def _run(tmp_path: Path, out: Path, *extra: str) -> int:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(GRID))
    return main(["experiment", "-c", str(cfg), "--output", str(out), "--no_progress", "true", *extra])


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    old = os.umask(0o022)
    try:
        assert _run(tmp, tmp / "run") == 0
    finally:
        os.umask(old)
    return tmp / "run"


def test_latex_table_pdf_figures_and_permissions(whole):
    tex = (whole / "results.tex").read_text()
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\label{tab:grid}",
                  r"\emph{BadNets}", r"\quad none & ", "over 2 seeds (0, 1)", "CA: clean accuracy", "ASR: share",
                  "Conditioned ASR:", r"\resizebox{\linewidth}{!}"):
        assert piece in tex, piece
    from PIL import Image

    for name in ("ca_asr_bars", "curves", "examples_badnets"):
        png, pdf = whole / f"{name}.png", whole / f"{name}.pdf"
        assert pdf.read_bytes()[:5] == b"%PDF-"
        assert min(Image.open(png).info["dpi"]) >= 150
        for f in (png, pdf, whole / "results.md", whole / "results.tex"):
            assert f.stat().st_mode & 0o777 == 0o644, f  # 0666 less the umask 022


def test_seeds_column_has_one_meaning(whole):
    with open(whole / "results.csv") as fh:
        csv_seeds = [r["seeds"] for r in csv.DictReader(fh)]
    main_table = (whole / "results.md").read_text().split("\n## ")[0]  # not the diagnostics sections
    md_rows = [line for line in main_table.splitlines() if line.startswith("| sup_A")]
    md_seeds = [line.split("|")[4].strip() for line in md_rows]
    assert csv_seeds == md_seeds == ["0 1", "0 1"]


def test_tensorboard_runs_named_by_row_with_learning_rate(whole):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted({p.relative_to(whole / "tensorboard").parent.as_posix()
                  for p in (whole / "tensorboard").rglob("events.out.tfevents.*")})
    assert runs == [f"sup_A__{a}__no-defense/seed{s}" for a in ("badnets", "no-attack") for s in (0, 1)]
    acc = EventAccumulator(str(whole / "tensorboard" / runs[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    lr = [t for t in tags if t.startswith("lr")]
    assert lr == ["lr-SGD"]  # one curve per optimiser, not one per parameter group
    assert len(acc.Scalars("lr-SGD")) == 2 and acc.Scalars("lr-SGD")[0].value == pytest.approx(0.03)
    assert not any("hp_metric" in t for t in tags)  # no placeholder


def test_console_says_na_for_a_clean_rows_asr(capsys):
    from lightning_ssl_backdoor.pipeline.jobs import summary

    summary(0, 1, {"algorithm": "a", "attack": None, "defense": None, "seed": 0, "clean_accuracy": 50.0,
                    "asr": None}, 1.0)
    err = capsys.readouterr().err
    assert "ASR n/a" in err and "None%" not in err and "CA 50.0%" in err


PROVENANCE = ("created", "elapsed_seconds")  # when and how fast: all a merge may change


def _report(folder: Path) -> dict:
    """What a merge must reproduce: results.json less timings and provenance, the Markdown less
    its provenance line, the CSV, the LaTeX and the names of the figures."""
    res = json.loads((folder / "results.json").read_text())
    res["rows"] = [{k: v for k, v in r.items() if k not in TIMING} for r in res["rows"]]
    res["config"].pop("output")
    for k in PROVENANCE:
        res.pop(k)
    md = [line for line in (folder / "results.md").read_text().splitlines() if not line.startswith("package ")]
    files = sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".pdf"))
    return {"json": res, "md": md, "csv": (folder / "results.csv").read_text(),
            "tex": (folder / "results.tex").read_text(), "figures": files}


def test_merged_shards_equal_the_whole_grids_report(whole, tmp_path, capsys):
    # the no-attack rows (and their base rates) in one shard, the attacked rows in the other
    assert _run(tmp_path, tmp_path / "b", "--only", "[2, 3]") == 0  # shards in any order
    assert _run(tmp_path, tmp_path / "a", "--only", "[0, 1]") == 0
    capsys.readouterr()
    assert main(["report", "merge", str(tmp_path / "b"), str(tmp_path / "a"), "--output", str(tmp_path / "m")]) == 0
    assert "merged from 2 shards" in capsys.readouterr().out
    merged, ref = _report(tmp_path / "m"), _report(whole)
    assert "## Base rates" in "\n".join(ref["md"]) and "| sup_A | badnets |" in "\n".join(ref["md"])
    for key in ("json", "md", "csv", "tex", "figures"):
        assert merged[key] == ref[key], key


def test_merge_keeps_the_base_rates_a_stale_copy_of_a_row_lacks(whole, tmp_path, capsys):
    """A shard that kept an older copy of the no-attack row (no base rates) listed first: the
    merged report still has the Base rates table the row's own shard measured."""
    res = json.loads((whole / "results.json").read_text())
    stale = tmp_path / "stale"
    stale.mkdir()
    rows = [dict(r) for r in res["rows"]]
    for r in rows:
        r.pop("base_rates", None)
    (stale / "results.json").write_text(json.dumps({**res, "rows": rows}))
    assert main(["report", "merge", str(stale), str(whole), "--output", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    merged = json.loads((tmp_path / "m" / "results.json").read_text())["rows"]
    assert [r.get("base_rates") for r in merged] == [r.get("base_rates") for r in res["rows"]]
    assert "## Base rates" in (tmp_path / "m" / "results.md").read_text()


def test_render_redraws_every_table_and_figure_from_results_json(whole, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(whole / "results.json", copy / "results.json")
    for f in whole.glob("examples_*"):  # drawn from the attacked split, not from results.json
        shutil.copy(f, copy / f.name)
    assert main(["report", "render", str(copy)]) == 0
    assert "figures redrawn" in capsys.readouterr().out
    for name in ("results.md", "results.csv", "results.tex"):
        assert (copy / name).read_text() == (whole / name).read_text(), name
    assert _report(copy)["figures"] == _report(whole)["figures"]
    # a results file given directly, drawn elsewhere
    assert main(["report", "render", str(copy / "results.json"), "--output", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "results.tex").read_text() == (whole / "results.tex").read_text()


@pytest.mark.parametrize("content, says", [
    (b"[]", "not an experiment report"), (b"{}", "not an experiment report"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not text"), (b"{\"rows\": [", "not valid JSON"),
    (None, "lacks defense"),
])
def test_malformed_shards_are_refused_with_one_sentence(whole, tmp_path, capsys, content, says):
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is None:  # a row missing a key
        res = json.loads((whole / "results.json").read_text())
        del res["rows"][1]["defense"]
        content = json.dumps(res).encode()
    (bad / "results.json").write_bytes(content)
    for argv in (["report", "merge", str(whole), str(bad), "--output", str(tmp_path / "m")], ["report", "render", str(bad)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err


def test_csv_holds_the_markdown_tables_cells(whole):
    with open(whole / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["algorithm", "attack", "defense", "seeds", "n", "clean_accuracy", "clean_accuracy_std",
                             "asr", "asr_std", "asr_conditioned", "asr_conditioned_std"]
    main_table = (whole / "results.md").read_text().split("\n## ")[0]
    md = [[c.strip() for c in line.split("|")[1:-1]] for line in main_table.splitlines() if line.startswith("| sup_A")]

    def cell(r, m):
        if not r[m]:
            return "–"
        return r[m] if not r[m + "_std"] else f"{r[m]} ± {r[m + '_std']}"

    as_md = [[r["algorithm"], r["attack"], r["defense"], r["seeds"], r["n"]]
             + [cell(r, m) for m in ("clean_accuracy", "asr", "asr_conditioned")] for r in rows]
    assert as_md == md
    assert rows[0]["attack"] == "none" and rows[0]["defense"] == "none" and rows[0]["n"] == "2"


def test_one_seed_csv_and_latex_have_no_std():
    from lightning_ssl_backdoor.report.latex import latex_table, tex_label
    from lightning_ssl_backdoor.report.style import Names
    from lightning_ssl_backdoor.report.tables import csv_table, summarize

    rows = [{"algorithm": "fixmatch", "attack": a, "defense": d, "seed": 0, "clean_accuracy": 70.0,
             "asr": None if a is None else 20.0, "asr_conditioned": None if a is None else 5.0}
            for a, d in ((None, None), ("clean_label", None), ("clean_label", "dbd-per-class"))]
    summary = summarize(rows)
    lines = list(csv.reader(csv_table(summary).splitlines()))
    assert lines[1] == ["fixmatch", "none", "none", "0", "1", "70.00", "", "", "", "", ""]
    assert lines[3] == ["fixmatch", "clean_label", "dbd-per-class", "0", "1", "70.00", "", "20.00", "", "5.00", ""]
    names = Names({"algorithm": {"fixmatch": "FixMatch"}, "attack": {"clean_label": "Clean-label"},
                   "defense": {"dbd-per-class": "DBD (per class)"}})
    tex = latex_table(summary, "Paper_Table 2", names)
    assert r"\pm" not in tex and "one seed (0), so no standard deviation" in tex
    assert r"\emph{Clean-label}" in tex and r"\quad DBD (per class) & 70.00 & 20.00 & 5.00 \\" in tex
    assert "(FixMatch)" in tex and "fixmatch" not in tex and "clean\\_label" not in tex
    assert r"\label{tab:paper-table-2}" in tex  # from the experiment's name: two reports never clash
    assert tex_label("cifar10_deneb") != tex_label("cifar10_dbd")


def test_display_names_come_from_the_registries():
    from lightning_ssl_backdoor.attacks.registry import ATTACKS, DISPLAY_NAMES as ATTACK_NAMES
    from lightning_ssl_backdoor.defenses.base import DEFENSES, DISPLAY_NAMES as DEFENSE_NAMES
    from lightning_ssl_backdoor.pipeline.display import config_names, display_label, num_classes
    from lightning_ssl_backdoor.ssl import ALGORITHMS, DISPLAY_NAMES as ALGORITHM_NAMES

    for registry, names in ((ALGORITHMS, ALGORITHM_NAMES), (ATTACKS, ATTACK_NAMES), (DEFENSES, DEFENSE_NAMES)):
        # the package's components (other tests register stand-ins of their own in the same process)
        ours = {k for k, cls in registry.items() if cls.__module__.startswith("lightning_ssl_backdoor.")}
        assert ours <= set(names), sorted(ours - set(names))  # a new component: name it
    assert display_label("algorithm", "fixmatch") == "FixMatch"
    assert display_label("attack", "clean_label") == "Clean-label"
    assert display_label("attack", "badnets", "badnets_gray") == "BadNets (gray)"
    assert display_label("defense", "dbd", "dbd-per-class") == "DBD (per class)"
    assert display_label("defense", "invalidator", "bi") == "BI"
    assert display_label("defense", "invalidator", "bi-test-filter") == "BI (test filter)"
    assert display_label("defense", "self_training", "semi-supervised-baseline") == "Semi supervised baseline"
    names = config_names({"algorithms": ["fixmatch"], "attacks": [None, {"name": "deneb", "label": "dehib"}],
                          "defenses": [None, {"name": "dbd", "label": "dbd-per-class"}]})
    assert names("attack", "dehib") == "Dehib" and names("defense", "dbd-per-class") == "DBD (per class)"
    assert names("defense", None) == "no defense" and names("algorithm", "fixmatch") == "FixMatch"
    assert num_classes({"data": {"dataset": "cifar10", "subset": {"classes": ["airplane", "frog"]}}}) == 2
    assert num_classes({"data": {"dataset": "digits"}}) == 10


def test_merge_refuses_shards_of_other_configs(whole, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    res = json.loads((whole / "results.json").read_text())
    res["config"]["seeds"] = [1]
    (other / "results.json").write_text(json.dumps(res))
    assert main(["report", "merge", str(whole), str(other), "--output", str(tmp_path / "m")]) == 2
    assert "another config" in capsys.readouterr().err
    assert main(["report", "merge", str(tmp_path / "nothing"), "--output", str(tmp_path / "m")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_influence_histogram_pools_the_trials_scores(tmp_path):
    """Carlini Fig. 7 in the report: poisons vs clean influence over every row that kept scores,
    written as PNG and PDF; rows without scores (or whose file is gone) are skipped."""
    import numpy as np

    from lightning_ssl_backdoor.data.artifacts import save_arrays
    from lightning_ssl_backdoor.report.figures import influence_histogram, write_figures

    rng = np.random.default_rng(0)
    rows = [{"defense": None, "defense_info": {}}, {"defense": "influence", "defense_info": {"scores_file": str(tmp_path / "gone.npz")}}]
    assert influence_histogram(rows, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    for t in range(2):
        poison = np.zeros(200, dtype=bool)
        poison[:5] = True
        scores = np.where(poison, 10 ** rng.uniform(-5, -4, 200), 10 ** rng.uniform(-2.5, -1.5, 200))
        f = save_arrays(tmp_path / f"t{t}" / "influence_scores.npz", {"influence": scores, "poison": poison})
        rows.append({"defense": "influence", "defense_info": {"scores_file": str(f)}})
    out = influence_histogram(rows, tmp_path / "influence_hist.png")
    assert out == tmp_path / "influence_hist.png" and out.stat().st_size > 5000
    assert out.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"
    report = tmp_path / "report"
    report.mkdir()
    full = [{**r, "algorithm": "fixmatch", "attack": "interpolation", "seed": i, "clean_accuracy": 50.0, "asr": None}
            for i, r in enumerate(rows[2:])]
    assert report / "influence_hist.png" in write_figures(full, report)


def test_targeted_trials_are_counted_as_carlini_table_1():
    from lightning_ssl_backdoor.report.diagnostics import diagnostics_markdown

    rows = [{"algorithm": "fixmatch", "attack": "interpolation", "defense": d, "seed": s, "target": s % 4,
             "targeted_success": hit, "defense_info": info}
            for d, info in ((None, {}), ("influence", {"auroc": 0.5, "recall": 0.25, "delta_roughness": 2.0}))
            for s, hit in ((0, 100.0), (1, 0.0), (2, 100.0))]
    rows.append({"algorithm": "fixmatch", "attack": None, "defense": None, "seed": 0, "targeted_success": None})
    md = "\n".join(diagnostics_markdown(rows))
    assert "## Targeted trials" in md
    assert "| fixmatch | interpolation | none | 2/3 | 0:0:1 1:1:0 2:2:1 | n/a | n/a | n/a |" in md
    assert "| fixmatch | interpolation | influence | 2/3 | 0:0:1 1:1:0 2:2:1 | 0.50 ± 0.00 | 0.25 ± 0.00 | 2.00 ± 0.00 |" in md
    assert "| fixmatch | none |" not in md
    assert diagnostics_markdown(rows[-1:]) == []
