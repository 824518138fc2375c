"""The DBD and Carlini CIFAR-10 configs (CPU scale and the papers' GPU settings) parse and run every
stage on a handful of generated images (the packed image-folder stand-in of test_cifar10_configs):
every attack, the DBD stages with SimCLR, each baseline, the SSL-threat row, Carlini's trials with
their own (x*, y*) and both defenses with per-epoch EMA recording. Steps and counts are cut to a few."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lightning_ssl_backdoor.cli import main
from tests.test_cifar10_configs import packed_cifar  # noqa: F401 - the shared fixture

ROOT = Path(__file__).resolve().parents[1]
POISON_LABEL = ("badnets", "blended", "wanet", "label_consistent")
BASELINES = ("neural_cleanse", "nad", "dpsgd", "shrinkpad", "spectral", "activation_clustering")


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / f"configs/experiments/{name}.yaml").read_text())


def _run(cfg: dict, tmp_path: Path) -> list[dict]:
    path = tmp_path / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    return json.loads((out / "results.json").read_text())["rows"], out


def _common(cfg: dict, root: Path, labeled_everything: bool = False) -> dict:
    cfg["data"].update(root=str(root), batch_size=4, eval_batch_size=64, num_workers=0)
    if cfg["data"].get("mu"):
        cfg["data"]["mu"] = 2
    if cfg["data"].get("subset"):
        cfg["data"]["subset"].update(labeled=6, unlabeled=6, test=4)
    else:  # the GPU configs: the whole generated training set (120 images) or a few labels
        cfg["data"]["num_labeled"] = 120 if labeled_everything else 40
    cfg["trainer"] = {"max_steps": 2, "val_check_interval": 2, "accelerator": "cpu", "precision": "32-true"}
    if cfg.get("surrogate"):
        cfg["surrogate"].update(steps=2, batch_size=4)
    cfg.update(seeds=[0], jobs=1)
    for d in cfg["defenses"]:
        d = d if isinstance(d, dict) else None  # null or a bare name: nothing to shrink
        args = (d or {}).get("init_args", {})
        if d and d["name"] == "dbd":
            args.update(simclr={**args["simclr"], "steps": 2, "batch_size": 16},
                        linear={**args["linear"], "steps": 1}, finetune={**args["finetune"], "steps": 2, "batch_size": 4})
        elif d and d["name"] == "neural_cleanse":
            args.update(reverse_steps=2, batch_size=8)
        elif d and d["name"] == "nad":
            args.update(teacher_epochs=0.1, epochs=0.1, batch_size=8)
        elif d and d["name"] == "dpsgd":
            args.update(steps=2, batch_size=4)
    return cfg


@pytest.mark.parametrize("name", ["cifar10_dbd", "cifar10_dbd_paper"])
def test_dbd_configs_run_every_stage(tmp_path, packed_cifar, name):  # noqa: F811
    cfg = _common(_load(name), packed_cifar, labeled_everything=name.endswith("paper"))
    if name == "cifar10_dbd_paper":  # ResNet-18 is slow on a CPU: BadNets undefended and with DBD, the
        # surrogate-based Label-Consistent undefended; every attack and defense is built (all of them
        # run in the CPU config above)
        cfg["rows"] = [{"attack": "badnets"}, {"attack": "badnets", "defense": "dbd"}, {"attack": "label_consistent"}]
        from lightning_ssl_backdoor.attacks import build_attack_from_spec
        from lightning_ssl_backdoor.defenses import build_defense
        from lightning_ssl_backdoor.spec import Spec

        for d in cfg["defenses"]:
            if d:
                build_defense(Spec(d["name"], d.get("init_args", {})))
        for a in cfg["attacks"]:
            build_attack_from_spec({"name": a["name"], **a["init_args"]}, progress=False)
    rows, _ = _run(cfg, tmp_path)
    got = {(r["algorithm"], r["attack"], r["defense"]) for r in rows}
    assert len(rows) == len(cfg["rows"]) and all(r["clean_accuracy"] is not None for r in rows)
    if name == "cifar10_dbd":
        expect = {("supervised", None, None), ("fixmatch", "mosaic", None), ("fixmatch", "mosaic", "dbd"),
                  ("fixmatch", "mosaic", "upure")}
        expect |= {("supervised", a, d) for a in POISON_LABEL for d in (None, "dbd", "dbd-per-class")}
        expect |= {("supervised", "badnets", d) for d in BASELINES}
        assert got == expect
        assert all(r["num_labeled"] == 24 and r["num_unlabeled"] >= 24 for r in rows)
    else:
        assert all(r["num_unlabeled"] == 0 for r in rows) and {r["attack"] for r in rows} == {"badnets", "label_consistent"}
    for r in rows:
        if r["defense"] not in ("dbd", "dbd-per-class"):
            continue
        info = r["defense_info"]
        labels = r["attack"] != "mosaic"  # poison-label rows: the labeled set alone, ranked
        assert info["threat_model"] == ("poisoned_labels" if labels else "poisoned_unlabeled")
        assert info["uses_unlabeled"] is (not labels) and info["stage1"]["steps"] == 2
        n_images = r["num_labeled"] + (0 if labels else r["num_unlabeled"])
        assert info["stage1"]["num_images"] == n_images and info["filter_per_class"] is (r["defense"] == "dbd-per-class")
    if name == "cifar10_dbd":  # dbd and dbd-per-class share one SimCLR per attack
        dbd = {(r["attack"], r["defense"]): r["defense_info"]["stage1"]["folder"] for r in rows if r["defense"] in ("dbd", "dbd-per-class")}
        assert all(dbd[(a, "dbd")] == dbd[(a, "dbd-per-class")] for a in POISON_LABEL)
        assert dbd[("mosaic", "dbd")] not in {dbd[(a, "dbd")] for a in POISON_LABEL}


@pytest.mark.parametrize("name", ["cifar10_carlini", "cifar10_carlini_paper"])
def test_carlini_configs_run_every_stage(tmp_path, packed_cifar, name):  # noqa: F811
    cfg = _common(_load(name), packed_cifar)
    attack = cfg["attacks"][0]["init_args"]
    attack.pop("budget_rate")
    attack["budget"] = 4
    cfg["seeds"] = [0, 1]  # two trials: each its own y*
    cfg["trainer"].update(max_steps=9, val_check_interval=9)  # epochs of 4 steps: records at steps 4, 8 and 9
    if name == "cifar10_carlini_paper":  # WRN-28-2 on a CPU: one trial, 3 steps, a record per step
        cfg["seeds"] = [0]
        cfg["trainer"].update(max_steps=3, val_check_interval=3)
        cfg["defenses"][2]["init_args"]["every_n_steps"] = 1
    rows, out = _run(cfg, tmp_path)
    defenses = (None, "clustering", "influence", "oracle_removal")
    assert {(r["attack"], r["defense"]) for r in rows} == {("interpolation", d) for d in defenses}
    assert len(rows) == 4 * len(cfg["seeds"]) and all(r["targeted_success"] in (0.0, 100.0) for r in rows)
    for r in (r for r in rows if r["defense"] == "oracle_removal"):  # the reference keeps no poison
        assert r["defense_info"]["removed_unlabeled"] == 4 and r["defense_info"]["removed_labeled"] == 0
    targets = cfg["attacks"][0]["init_args"]["targets"]
    assert {r["seed"]: r["target"] for r in rows} == {s: targets[s] for s in cfg["seeds"]}
    for r in (r for r in rows if r["defense"] == "influence"):
        info = r["defense_info"]
        assert info["recorded_weights"] == "ema" and info["auroc"] is not None and Path(info["scores_file"]).is_file()
        if name == "cifar10_carlini":  # one record per pass over the attacked unlabeled set (4 + 4 x 6 images)
            assert info["record_every"] == "epoch" and info["every_n_steps"] == -(-(24 + 4) // (4 * 2)) == 4
            assert info["num_records"] == 3
    assert (out / "influence_hist.png").is_file() and (out / "influence_hist.pdf").is_file()


def test_paper_configs_keep_the_papers_settings():
    dbd, carlini = _load("cifar10_dbd_paper"), _load("cifar10_carlini_paper")
    assert dbd["model"]["arch"] == "resnet18" and dbd["data"]["num_labeled"] == 50000 and dbd["data"]["image_size"] == 32
    args = dbd["defenses"][1]["init_args"]
    assert args["simclr"]["steps"] == 100 * 98  # 100 epochs of ceil(50,000 / 512) = 98 steps
    assert args["finetune"]["steps"] == 190 * -(-25000 // 64) and args["filter_rate"] == 0.5
    assert carlini["model"]["arch"] == "wrn28_2" and carlini["trainer"]["max_steps"] == 2**20
    assert carlini["data"]["num_labeled"] == 40 and carlini["attacks"][0]["init_args"]["density"] == "1.5-x"
    cpu = _load("cifar10_carlini")
    assert cpu["attacks"][0]["init_args"]["budget_rate"] <= 0.01 and len(cpu["seeds"]) == 8
    assert cpu["defenses"][2]["init_args"]["every_n_steps"] == "epoch" and cpu["defenses"][2]["init_args"]["use_ema"]


def test_dbd_long_scaled_rows_build_with_their_stage_lengths():
    """cifar10_dbd_long's `dbd-scaled` rows: the paper's DBD with the SCE head's epochs, the lambda_u
    ramp and the fine-tuning length scaled to 1,600 images, plus the SSL split's unlabeled images."""
    from lightning_ssl_backdoor.defenses import build_defense
    from lightning_ssl_backdoor.spec import Spec

    cfg = _load("cifar10_dbd_long")
    by_label = {d.get("label", d["name"]): d for d in cfg["defenses"] if d}
    for label, per_class in (("dbd-scaled", False), ("dbd-per-class-scaled", True)):
        args = by_label[label]["init_args"]
        assert args["use_unlabeled"] is True and args["filter_per_class"] is per_class and args["filter_rate"] == 0.5
        assert args["linear"]["epochs"] == 100 and args["finetune"]["steps"] == 6000
        assert args["finetune"]["rampup_ratio"] == 1.0 and args["simclr"] == by_label["dbd"]["init_args"]["simclr"]
        build_defense(Spec("dbd", args))
    rows = {(r["attack"], r.get("defense")) for r in cfg["rows"]}
    assert {(a, d) for a in ("badnets", "blended") for d in ("dbd-scaled", "dbd-per-class-scaled")} <= rows
