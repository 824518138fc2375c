"""The papers' baselines through the real experiment runner (``ssl-backdoor experiment``): a
model repair (``ft``), a data-stage detector (``spectral``) and DP-SGD on a tiny poison-label setting.

BadNets (a 3 x 3 white patch, bottom right) relabels 3% of the 400 labeled digits to class 0; plain
supervised training learns the backdoor (ASR > 70%). Fine-tuning on the defender's benign labeled
images (``benign: unpoisoned_labeled``, the supervised baselines' benign-subset assumption) and
spectral signatures on the labeled pool (given labels, ``epsilon`` = the poison rate) both bring it
down; the detector's AUROC against the poison mask is reported in ``defense_info``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lightning_ssl_backdoor.cli import main

SETTING = {
    "name": "baselines-runner",
    "seeds": [0],
    "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 40, "num_unlabeled": 50,
             "batch_size": 32, "mu": 1, "eval_batch_size": 500},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "weak_flip": False, "model_kwargs": {"width": 16},
              "ema_decay": None, "lr": 0.1},
    "trainer": {"max_steps": 300, "val_check_interval": 1000, "checkpoint_every_n_steps": 1000, "accelerator": "cpu"},
    "algorithms": ["supervised"],
    "attacks": [{"name": "badnets", "init_args": {"target": 0, "budget_rate": 0.03,
                                                  "trigger": {"name": "badnets", "size": 3, "color": "white"}}}],
    "defenses": [
        None,
        {"name": "ft", "init_args": {"lr": 0.1, "epochs": 20, "benign": "unpoisoned_labeled"}},
        {"name": "spectral", "init_args": {"epsilon": 0.03}},
        {"name": "dpsgd", "init_args": {"steps": 150, "noise_multiplier": 0.5}},
    ],
}


def test_ft_spectral_and_dpsgd_lower_asr_through_the_runner(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(SETTING))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    rows = {r["defense"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    none, ft, spectral, dp = rows[None], rows["ft"], rows["spectral"], rows["dpsgd"]
    assert none["asr"] >= 70 and none["clean_accuracy"] >= 90

    # ft: a ModelDefense; the row reports the repaired model, the trained one is kept in defense_info
    assert ft["asr"] <= 30 and ft["clean_accuracy"] >= none["clean_accuracy"] - 5
    info = ft["defense_info"]
    assert info["benign_data"].startswith("unpoisoned_labeled") and info["benign_images"] == 400 - 12
    assert info["before"]["asr"] >= 0.7 and info["repaired_weights"] == "raw"

    # spectral: a DataDefense on the labeled pool (the attack's), scored against the poison mask
    assert spectral["asr"] <= 30 and spectral["clean_accuracy"] >= none["clean_accuracy"] - 10
    info = spectral["defense_info"]
    assert info["pool"] == "labeled" and info["classes"] == "given labels"
    assert info["auroc"] >= 0.9 and info["recall"] >= 0.8 and info["num_poison"] == 12
    assert info["num_removed"] == 10 * round(1.5 * 0.03 * 400)  # the paper's 1.5 epsilon per class
    assert info["feature_model"]["steps"] == 300

    # dpsgd: from scratch on the labeled set with per-sample clipping + noise
    assert dp["steps"] == 150 and dp["defense_info"]["trained_on"].startswith("labeled set only")
    assert dp["asr"] < none["asr"]

    # ft and spectral reuse the undefended row's training instead of each training its own copy
    # (spectral's one training of its own is the retraining on the images it keeps)
    trained = sorted(p.parent.relative_to(out / "cache").as_posix().split("-")[0] for p in (out / "cache").rglob("metrics.json"))
    assert trained == ["defense", "train"]
    assert ft["defense_info"]["before"]["asr"] == pytest.approx(none["asr"] / 100, abs=5e-5)
    assert spectral["defense_info"]["feature_model"]["test"]["acc"] == pytest.approx(none["clean_accuracy"] / 100, abs=5e-5)


def test_parallel_rows_share_the_undefended_training(tmp_path):
    """jobs 2: the ft row and the undefended row start together; one trains the shared folder, the
    other waits for it and finds it cached (one training, not two)."""
    setting = {**SETTING, "jobs": 2, "threads": 1, "defenses": [None, SETTING["defenses"][1]]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(setting))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    rows = {r["defense"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    trained = [p.parent for p in (out / "cache").rglob("metrics.json")]
    assert len(trained) == 1 and trained[0].name.startswith("train-")
    assert rows["ft"]["defense_info"]["before"]["asr"] == pytest.approx(rows[None]["asr"] / 100, abs=5e-5)


# ------------------------------------------------------------------ the pieces the wiring adds
import torch  # noqa: E402

from lightning_ssl_backdoor.data import ImageSet  # noqa: E402
from lightning_ssl_backdoor.data.split import PoisonedSplit  # noqa: E402
from lightning_ssl_backdoor.defenses import DEFENSES, DataDefense, Defense, DefenseContext, ModelDefense  # noqa: E402
from lightning_ssl_backdoor.defenses.base import TrainedModel  # noqa: E402
from lightning_ssl_backdoor.defenses.baselines import BASELINES, ActivationClustering, SpectralSignatures  # noqa: E402
from lightning_ssl_backdoor.defenses.baselines._common import context_labeled  # noqa: E402
from lightning_ssl_backdoor.defenses.baselines._detect import filter_labeled, resolve_pool  # noqa: E402
from lightning_ssl_backdoor.errors import ConfigError  # noqa: E402
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig  # noqa: E402

SHAPES = {"ft": ModelDefense, "fp": ModelDefense, "nad": ModelDefense, "mcr": ModelDefense, "abl": ModelDefense,
          "neural_cleanse": ModelDefense, "shrinkpad": ModelDefense, "spectral": DataDefense,
          "activation_clustering": DataDefense, "dpsgd": Defense}


def test_every_baseline_is_registered_with_its_shape():
    assert set(BASELINES) == set(SHAPES)
    for name, shape in SHAPES.items():
        assert DEFENSES[name] is BASELINES[name] and issubclass(DEFENSES[name], shape)
    with pytest.raises(ConfigError, match="benign must be one of"):
        BASELINES["ft"](benign="test")
    with pytest.raises(ConfigError, match="pool must be one of"):
        SpectralSignatures(pool="test")


def _split(n_lab=8, n_unl=6, poisoned_labeled=(1, 5), pool="labeled"):
    g = torch.Generator().manual_seed(0)
    img = lambda n: torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)  # noqa: E731
    labeled = ImageSet(img(n_lab), torch.arange(n_lab) % 2, ["a", "b"])
    unlabeled = ImageSet(img(n_unl), torch.full((n_unl,), -1), ["a", "b"], torch.arange(n_unl) % 2)
    test = ImageSet(img(4), torch.arange(4) % 2, ["a", "b"])
    mask = torch.zeros(n_lab, dtype=torch.bool)
    mask[list(poisoned_labeled)] = True
    return PoisonedSplit(labeled, unlabeled, test, torch.arange(n_lab), torch.arange(n_unl), target=0,
                         labeled_poison_mask=mask, attack={"pool": pool, "arrays": {"position": torch.tensor(poisoned_labeled)}})


def test_filter_labeled_and_pool_resolution():
    split = _split()
    keep = torch.ones(8, dtype=torch.bool)
    keep[[0, 5]] = False
    out = filter_labeled(split, keep)
    assert len(out.labeled) == 6 and out.labeled_indices.tolist() == [1, 2, 3, 4, 6, 7]
    assert out.labeled_poison_mask.tolist() == [True] + [False] * 5
    assert out.attack["arrays"]["position"].tolist() == [0, -1] and out.attack["removed_labeled"] == 2
    assert torch.equal(out.labeled.images, split.labeled.images[keep]) and len(out.unlabeled) == 6
    with pytest.raises(ConfigError, match="every labeled image"):
        filter_labeled(split, torch.zeros(8, dtype=torch.bool))
    assert resolve_pool("auto", split) == "labeled" and resolve_pool("auto", _split(pool="unlabeled")) == "unlabeled"
    assert resolve_pool("unlabeled", split) == "unlabeled"


def test_benign_data_choice_is_recorded():
    split = _split()

    class Ctx:
        info: dict = {}

    ctx = Ctx()
    ctx.split, ctx.info = split, {}
    x, y = context_labeled(ctx, "labeled")
    assert len(y) == 8 and ctx.info == {"benign_data": "labeled", "benign_images": 8, "benign_poisons": 2}
    x, y = context_labeled(ctx, "unpoisoned_labeled")
    assert torch.equal(x, split.labeled.images[[0, 2, 3, 4, 6, 7]]) and ctx.info["benign_images"] == 6


@pytest.mark.parametrize("detector,key,bound", [
    (SpectralSignatures(epsilon=0.1, pool="unlabeled"), "recall", 0.8),  # removes 1.5 epsilon per class
    (ActivationClustering(pool="unlabeled"), "precision", 0.9),  # removes the small clusters only
], ids=["spectral", "ac"])
def test_detector_scores_the_unlabeled_pool_on_pseudo_labels(tmp_path, detector, key, bound):
    """The poisoned unlabeled pool of the baseline setting, scored with the backdoored model as the
    runner's feature model: poisons are flagged and removed, the detection report is in the info."""
    from tests.baseline_setting import CLASSES, build_setting

    s = build_setting()
    names = [str(k) for k in range(CLASSES)]
    split = PoisonedSplit(
        ImageSet(s.clean_images, s.clean_labels, names),
        ImageSet(s.train_images, torch.full_like(s.train_labels, -1), names, s.train_labels),
        ImageSet(s.test_images, s.test_labels, names), torch.arange(len(s.clean_labels)),
        torch.arange(len(s.train_labels)), target=0, unlabeled_poison_mask=s.poison_mask, attack={"pool": "unlabeled"})
    calls = []

    def train_fn(split_, algorithm, model_args, data, trainer, seed, workdir, **kw):
        calls.append((workdir.name, trainer.max_steps, kw.get("save_model")))
        return {"steps": trainer.max_steps, "test": {}}

    ctx = DefenseContext(split=split, seed=0, algorithm=Spec("supervised"), model_args={}, data=DataConfig(),
                         trainer=TrainerConfig(max_steps=7), stage_dir=tmp_path, train_fn=train_fn,
                         load_fn=lambda res, c: TrainedModel(s.model, None))
    kept, info = detector.filter(split, ctx)
    assert calls == [("detector", 7, True)]
    assert info["pool"] == "unlabeled" and info["classes"] == "pseudo-labels" and info["auroc"] >= 0.85
    assert info["num_kept"] == len(kept.unlabeled) and kept.unlabeled_poison_mask.sum() == info["poisons_kept"]
    assert info[key] >= bound and info["num_poison"] == int(s.poison_mask.sum())
