"""Report outputs of `ssl-backdoor experiment`: LaTeX table, PNG (>= 150 dpi) + PDF figures with
the usual permissions, TensorBoard runs named by row with the learning rate, one meaning of the
``seeds`` column, "n/a" for a clean row's ASR; and `report merge` of --only shards."""

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
    "seeds": [0],
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
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"sup\_A & badnets & none & 0 &"):
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
    assert csv_seeds == md_seeds == ["0", "0"]


def test_tensorboard_runs_named_by_row_with_learning_rate(whole):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted({p.relative_to(whole / "tensorboard").parent.as_posix()
                  for p in (whole / "tensorboard").rglob("events.out.tfevents.*")})
    assert runs == ["sup_A__badnets__no-defense/seed0", "sup_A__no-attack__no-defense/seed0"]
    acc = EventAccumulator(str(whole / "tensorboard" / runs[0]))
    acc.Reload()
    lr = [t for t in acc.Tags()["scalars"] if t.startswith("lr")]
    assert lr and len(acc.Scalars(lr[0])) == 2 and acc.Scalars(lr[0])[0].value == pytest.approx(0.03)


def test_console_says_na_for_a_clean_rows_asr(capsys):
    from lightning_ssl_backdoor.pipeline.experiment import _summary

    _summary(0, 1, {"algorithm": "a", "attack": None, "defense": None, "seed": 0, "clean_accuracy": 50.0,
                    "asr": None}, 1.0)
    err = capsys.readouterr().err
    assert "ASR n/a" in err and "None%" not in err and "CA 50.0%" in err


def test_merged_shards_equal_the_whole_grids_report(whole, tmp_path, capsys):
    assert _run(tmp_path, tmp_path / "b", "--only", "[1]") == 0  # shards in any order
    assert _run(tmp_path, tmp_path / "a", "--only", "[0]") == 0
    capsys.readouterr()
    assert main(["report", "merge", str(tmp_path / "b"), str(tmp_path / "a"), "--output", str(tmp_path / "m")]) == 0
    assert "merged from 2 shards" in capsys.readouterr().out

    def load(folder: Path) -> dict:
        res = json.loads((folder / "results.json").read_text())
        res["rows"] = [{k: v for k, v in r.items() if k not in TIMING} for r in res["rows"]]
        res["config"].pop("output")
        return res

    merged, ref = load(tmp_path / "m"), load(whole)
    for key in ("rows", "summary", "config"):
        assert merged[key] == ref[key], key
    for name in ("results.csv", "results.tex"):
        assert (tmp_path / "m" / name).read_text() == (whole / name).read_text(), name
    table = lambda p: [line for line in p.read_text().splitlines() if line.startswith("|")]  # noqa: E731
    assert table(tmp_path / "m" / "results.md") == table(whole / "results.md")
    assert (tmp_path / "m" / "examples_badnets.png").is_file()


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
