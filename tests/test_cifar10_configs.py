"""The CIFAR-10 experiment configs parse and run every stage on a handful of generated images.

The real CIFAR-10 copy is never needed: a tiny image-folder tree with CIFAR-10's class names,
packed as ``train.tar.gz`` / ``test.tar.gz`` like the shared copy, stands in for it; steps and counts
are cut so every row (attack, surrogate, defense, training, evaluation) runs in seconds.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightning_ssl_backdoor.cli import main

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def packed_cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        tree = root / "tree" / "cifar10" / split
        for c, name in enumerate(CIFAR10):
            (tree / name).mkdir(parents=True)
            for i in range(n):
                base = np.full((32, 32, 3), 20 * c, dtype=np.uint8)
                img = np.clip(base + rng.integers(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(tree / name / f"{i:04d}.png")
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(tree, arcname=f"cifar10/{split}")
    return root


def _shrink(cfg: dict, root: Path) -> dict:
    cfg["data"].update(root=str(root), batch_size=4, mu=2, eval_batch_size=64, num_workers=0)
    if cfg["data"].get("subset"):
        cfg["data"]["subset"].update(labeled=3, unlabeled=6, test=4)
    else:
        cfg["data"]["num_labeled"] = 30
    cfg["model"]["arch"] = cfg["model"].get("arch", "tiny_cnn")
    cfg["trainer"] = {"max_steps": 2, "val_check_interval": 1, "accelerator": "cpu", "precision": "32-true"}
    cfg["surrogate"].update(steps=2, batch_size=4)
    cfg.update(seeds=[0], jobs=1)
    for a in cfg["attacks"]:
        if a:
            a["init_args"]["budget"] = 2
            if a["name"] == "deneb":
                a["init_args"]["steps"] = 1
    for d in cfg["defenses"]:
        if d and d["name"] == "depud":
            d["init_args"]["detector"]["steps"] = 2
    return cfg


@pytest.mark.parametrize("name", ["cifar10_deneb", "cifar10_deneb_paper"])
def test_cifar10_deneb_configs_run_every_stage(tmp_path, packed_cifar, name):
    cfg = _shrink(yaml.safe_load((ROOT / f"configs/experiments/{name}.yaml").read_text()), packed_cifar)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == len(cfg["rows"])
    expected = {(None, None), ("clean_label", None), ("deneb", None), ("deneb", "depud-ocdp"), ("deneb", "depud-weighted")}
    if name == "cifar10_deneb":  # DePuD Table V's backdoor-erasing baselines
        expected |= {("deneb", d) for d in ("ft", "fp", "mcr", "nad", "upure")}
    assert {(r["attack"], r["defense"]) for r in rows} == expected
    assert all(r["clean_accuracy"] is not None for r in rows)
