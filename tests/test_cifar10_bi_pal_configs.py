"""``cifar10_bi.yaml`` and ``cifar10_pal.yaml`` parse and run every stage (each attack, each defense
label, surrogate, training, evaluation, report) on a handful of generated CIFAR-10-like images, as
``tests/test_cifar10_configs.py`` does for the DeNeB configs; steps and counts are cut to seconds."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lightning_ssl_backdoor.cli import main
from tests.test_cifar10_configs import _shrink, packed_cifar  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]


def _cut(cfg: dict, root: Path) -> dict:
    for a in cfg["attacks"]:
        if a:  # _shrink gives every attack a budget of 2 images
            for k in ("budget_rate", "target_class_rate"):
                a["init_args"].pop(k, None)
            if a["name"] == "narcissus":
                a["init_args"]["steps"] = 1
    cfg = _shrink(cfg, root)
    for d in cfg["defenses"]:
        if d and d["name"] == "self_training_simclr":
            d["init_args"]["simclr"].update(steps=2, batch_size=8)
            d["init_args"]["kmeans_restarts"] = 1
    return cfg


def _run(tmp_path, cfg: dict, name: str) -> list[dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    return json.loads((out / "results.json").read_text())["rows"]


def test_cifar10_bi_config_runs_every_attack_and_defense(tmp_path, packed_cifar):  # noqa: F811
    cfg = yaml.safe_load((ROOT / "configs/experiments/cifar10_bi.yaml").read_text())
    full = {(r.get("attack"), r.get("defense")) for r in cfg["rows"]}
    attacks = ["mosaic", "freq", "cl_badnets", "narcissus"]
    defenses = ["bi", "bi-test-filter", "bi-filter-only", "bi-complementary-only", "bi-mixup-only", "bi-no-filter",
                "ft", "fp", "nad", "abl", "upure"]
    assert full == {(None, None)} | {(a, d) for a in attacks for d in [None, *defenses]}
    assert cfg["seeds"] == [0, 1, 2] and cfg["jobs"] == 2 and cfg["threads"] == 1
    # every attack once undefended, every defense once (on mosaic): each stage is built and runs
    cfg["rows"] = [{"attack": a} for a in attacks] + [{"attack": "mosaic", "defense": d} for d in defenses]
    rows = _run(tmp_path, _cut(cfg, packed_cifar), "cifar10_bi")
    assert {(r["attack"], r["defense"]) for r in rows} == {(r["attack"], r.get("defense")) for r in cfg["rows"]}
    assert all(r["clean_accuracy"] is not None and r["asr"] is not None for r in rows)


def test_cifar10_pal_config_runs_every_row(tmp_path, packed_cifar):  # noqa: F811
    cfg = yaml.safe_load((ROOT / "configs/experiments/cifar10_pal.yaml").read_text())
    attacks, defenses = ["badnets_gray", "badnets_rgb", "clean_label_pgd"], ["strong-aug-supervised", "self-training",
                                                                              "self-training-simclr",
                                                                              "semi-supervised-baseline",
                                                                              "self-training-views32"]
    assert {(r.get("attack"), r.get("defense")) for r in cfg["rows"]} == (
        {(None, None)} | {(a, d) for a in attacks for d in [None, *defenses]})
    cfg["rows"] = [{"attack": "badnets_gray"}, {"attack": "clean_label_pgd"}] + [
        {"attack": "badnets_rgb", "defense": d} for d in defenses]
    cfg = _cut(cfg, packed_cifar)
    cfg["data"]["mu"] = 0  # supervised rows: no unlabeled stream, as in the config
    rows = _run(tmp_path, cfg, "cifar10_pal")
    assert {(r["attack"], r["defense"]) for r in rows} == {(r["attack"], r.get("defense")) for r in cfg["rows"]}
    assert all(r["algorithm"] == "supervised" and r["asr"] is not None for r in rows)
    st = next(r for r in rows if r["defense"] == "self-training-simclr")
    assert st["defense_info"]["rounds"][0]["labels_from"] == "clusters"
    base = next(r for r in rows if r["defense"] == "semi-supervised-baseline")
    assert base["defense_info"]["config"]["augment"] is None  # Pal Table 2's middle column: no T
    tta = next(r for r in rows if r["defense"] == "self-training-views32")
    assert tta["defense_info"]["config"]["views"] == 32 and tta["defense_info"]["config"]["augment"] == "labeled"
