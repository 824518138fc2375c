"""Hijack diagnostics and base rates: against a brute-force recount, and through the real runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.data import PoisonedSplit
from lightning_ssl_backdoor.ssl.fixmatch import FixMatch

from tests.conftest import random_imageset

TINY = {
    "name": "tiny_hijack",
    "seeds": [0],
    "data": {"dataset": "digits", "image_size": 12, "labels_per_class": 3, "batch_size": 8, "mu": 2,
             "eval_batch_size": 500},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": 0.9},
    "trainer": {"max_steps": 4, "val_check_interval": 2, "accelerator": "cpu"},
    "surrogate": {"arch": "tiny_cnn", "model_kwargs": {"width": 8}, "steps": 5, "batch_size": 8},
    "algorithms": [{"name": "fixmatch", "init_args": {"threshold": 0.5}}],
    "attacks": [None,
                {"name": "clean_label", "init_args": {"target": 1, "budget": 6, "trigger": {"name": "deneb", "size": 3, "margin": 1}}},
                {"name": "deneb", "init_args": {"target": 1, "budget": 4, "steps": 2, "trigger": {"name": "deneb", "size": 3, "margin": 1}}}],
}


def test_hijack_share_matches_a_recount():
    """The share of triggered poisons whose seeded weak view is predicted as the target with
    confidence >= tau equals a recount with the same draws."""
    unl = random_imageset(20, c=1, size=8, classes=2, seed=3)
    lab = random_imageset(8, c=1, size=8, classes=2, seed=4)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[2, 5, 7, 11]] = True
    split = PoisonedSplit(labeled=lab, unlabeled=unl.unlabeled(), test=lab, labeled_indices=torch.arange(8),
                          unlabeled_indices=torch.arange(20), seed=0, target=1, unlabeled_poison_mask=mask,
                          attack={"pool": "unlabeled", "arrays": {
                              "position": torch.tensor([2, 5, 7, 11]), "triggered": torch.tensor([True, False, True, True])}})
    module = FixMatch(arch="tiny_cnn", num_classes=2, in_channels=1, model_kwargs={"width": 4}, threshold=0.4)
    module.target = 1

    class DM:
        pass

    dm = DM()
    dm.split = split
    module._setup_hijack(dm)
    assert module._hijack_images.shape[0] == 3  # the untriggered poison (position 5) is not counted
    share = module.hijack_share()
    g = torch.Generator().manual_seed(1_234_567)
    x = module.weak(unl.images[[2, 7, 11]].float() / 255, generator=g)
    module.model.eval()
    with torch.no_grad():
        p = torch.softmax(module.model(x), 1)
    expected = float(((p.argmax(1) == 1) & (p.max(1).values >= 0.4)).float().mean())
    assert share == pytest.approx(expected)  # a float32 mean against a Python float (2/3 differs in the 8th digit)


def test_runner_reports_hijack_and_base_rates(tmp_path):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(cfg_path), "--output", str(out), "--no_progress", "true"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    clean = next(r for r in rows if r["attack"] is None)
    assert set(clean["base_rates"]) == {"clean_label", "deneb"}
    for v in clean["base_rates"].values():
        assert 0 <= v["asr"] <= 100 and 0 <= v["asr_conditioned"] <= 100
    deneb = next(r for r in rows if r["attack"] == "deneb")
    assert 0 <= deneb["backdoor_stats"]["hijack_step0"] <= 100 and 0 <= deneb["backdoor_stats"]["hijack"] <= 100
    assert all("backdoor/hijack" in h for h in deneb["history"])
    md = (out / "results.md").read_text()
    assert "## Hijack of the triggered poisons" in md and "## Base rates" in md
    assert (out / "curves.png").is_file()
