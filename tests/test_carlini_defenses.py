"""Carlini's defenses in the runner: ``defense: influence`` (Sec. 5.3) and ``defense: clustering`` (Sec. 5.2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.sparse.csgraph import minimum_spanning_tree

from lightning_ssl_backdoor.attacks.interpolation import InterpolationAttack
from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.data.artifacts import save_arrays
from lightning_ssl_backdoor.defenses.clustering_defense import ClusteringDefense, FeatureSnapshot
from lightning_ssl_backdoor.defenses.influence_defense import InfluenceDefense, filter_unlabeled
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig
from lightning_ssl_backdoor.defenses import DefenseContext, build_defense
from lightning_ssl_backdoor.pipeline.defense_stage import defense_context
from lightning_ssl_backdoor.defenses import TrainingDynamicsRecorder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def poisoned(digits_split):
    """Digits 8x8 with a 30-image interpolation path (x' labeled class 0 -> test image x*) appended."""
    return InterpolationAttack(target=0, seed=3, budget=30, source="labeled", progress=False).poison(digits_split)


def fake_history(poison: torch.Tensor, records: int = 8, classes: int = 10, seed: int = 0) -> torch.Tensor:
    """Benign examples wander at random between records; the planted poisons all follow one shared,
    nearly frozen trajectory, so each one's changes repeat the others' (minimal influence)."""
    g = torch.Generator().manual_seed(seed)
    n = poison.numel()
    hist = torch.softmax(3.0 * torch.randn(records, n, classes, generator=g), dim=-1)
    shared = torch.softmax(torch.randn(classes, generator=g), dim=-1)
    noise = 1e-4 * torch.randn(records, int(poison.sum()), classes, generator=g)
    hist[:, poison] = (shared + noise).clamp_min(0)
    return hist / hist.sum(-1, keepdim=True)


class StubTrainer:
    """Stands in for ``train_row``: writes what the defenses' callbacks would store and records calls."""

    def __init__(self, history=None, features=None):
        self.history, self.features, self.calls = history, features, []

    def __call__(self, split, algorithm, model_args, data, trainer, seed, workdir, enable_progress_bar=True,
                 extra_callbacks=None):
        self.calls.append({"name": Path(workdir).name, "split": split, "steps": trainer.max_steps})
        done = Path(workdir) / "metrics.json"  # like train_row: a finished stage is not trained again
        if done.is_file():
            return json.loads(done.read_text())
        for cb in extra_callbacks or []:
            if isinstance(cb, TrainingDynamicsRecorder):
                save_arrays(cb.path, {"history": self.history, "steps": torch.arange(self.history.shape[0])})
            if isinstance(cb, FeatureSnapshot):
                save_arrays(cb.path, {"features": self.features})
        poisons = int(getattr(split, "unlabeled_poison_mask", torch.zeros(0)).sum())
        res = {"test": {"acc": 0.5, "targeted": float(poisons > 0)}, "history": [], "fit_seconds": 0.0,
               "steps": trainer.max_steps, "has_ema": False}
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(res))
        return res


def make_ctx(split, tmp_path, stub) -> DefenseContext:
    return defense_context(split, 0, Spec("fixmatch"), {"arch": "tiny_cnn"}, DataConfig(dataset="digits"),
                          TrainerConfig(max_steps=7, val_check_interval=7, accelerator="cpu"), tmp_path / "stage",
                          progress=False, trainer_fn=stub)


def check_consistent(before, after, keep):
    idx = torch.nonzero(keep).flatten()
    assert len(after.unlabeled) == len(after.unlabeled_indices) == len(after.unlabeled_poison_mask) == idx.numel()
    assert torch.equal(after.unlabeled.images, before.unlabeled.images[idx])
    assert torch.equal(after.unlabeled.true_labels, before.unlabeled.true_labels[idx])
    assert torch.equal(after.unlabeled_indices, before.unlabeled_indices[idx])
    assert torch.equal(after.unlabeled_poison_mask, before.unlabeled_poison_mask[idx])
    assert after.labeled is before.labeled and after.test is before.test and after.target == before.target
    assert after.attack["info"]["target_image"] == before.attack["info"]["target_image"]
    pos_old = before.attack["arrays"]["position"]
    pos_new = after.attack["arrays"]["position"]
    for old, new in zip(pos_old.tolist(), pos_new.tolist()):
        if keep[old]:
            assert torch.equal(after.unlabeled.images[new], before.unlabeled.images[old])
        else:
            assert new == -1


def test_filter_unlabeled_subsets_every_field(poisoned):
    keep = torch.ones(len(poisoned.unlabeled), dtype=torch.bool)
    keep[::7] = False
    keep[poisoned.unlabeled_poison_mask.nonzero().flatten()[:5]] = False
    out = filter_unlabeled(poisoned, keep)
    check_consistent(poisoned, out, keep)
    assert int(out.unlabeled_poison_mask.sum()) == int((keep & poisoned.unlabeled_poison_mask).sum()) < 25
    assert out.attack["removed_unlabeled"] == int((~keep).sum())
    assert len(poisoned.unlabeled) == len(poisoned.unlabeled_poison_mask)  # the input is untouched
    with pytest.raises(ConfigError, match="every unlabeled image"):
        filter_unlabeled(poisoned, torch.zeros_like(keep))
    with pytest.raises(ConfigError, match="entries"):
        filter_unlabeled(poisoned, keep[:-1])


def test_influence_filter_drops_the_planted_poisons(poisoned, tmp_path):
    mask = poisoned.unlabeled_poison_mask
    stub = StubTrainer(history=fake_history(mask))
    defense = InfluenceDefense(every_n_steps=1, drop_count=int(mask.sum()))
    out, info = defense.filter(poisoned, make_ctx(poisoned, tmp_path, stub))
    assert [c["name"] for c in stub.calls] == ["record"] and stub.calls[0]["split"] is poisoned
    assert int(out.unlabeled_poison_mask.sum()) == 0 and len(out.unlabeled) == len(poisoned.unlabeled) - int(mask.sum())
    check_consistent(poisoned, out, ~mask)
    assert info["recall"] == 1.0 and info["fpr"] == 0.0 and info["auroc"] == 1.0
    assert info["all_poisons_below_percentile"] is True and info["worst_poison_rank"] == int(mask.sum())
    assert info["num_records"] == 8 and Path(info["histogram"]).stat().st_size > 1000
    # how far the attacker's label spread along the path in the recording run (all poisons share one trajectory)
    hist = stub.history
    expect = float(int(hist[-1, mask][0].argmax()) == poisoned.target)
    assert info["poison_target_share"] == expect
    json.dumps(info)  # the row's defense_info is written to results.json
    # the recorded store is reused: a second defense on the same stage trains nothing new
    stub.history = None
    out2, info2 = InfluenceDefense(every_n_steps=1, drop_fraction=0.01).filter(poisoned, make_ctx(poisoned, tmp_path, stub))
    assert info2["num_removed"] == round(0.01 * len(poisoned.unlabeled)) and info2["precision"] == 1.0


def grow_labels(split) -> np.ndarray:
    """A deterministic transductive learner with SSL's failure mode (Carlini, Sec. 3): labels spread
    from the labeled images to unlabeled ones along the shortest pixel-space edges first (Kruskal on
    the minimum spanning tree; two labeled groups never merge). Returns labels of labeled + unlabeled."""
    x = torch.cat([split.labeled.float(), split.unlabeled.float()]).flatten(1).double()
    n_lab = len(split.labeled)
    mst = minimum_spanning_tree(torch.cdist(x, x).numpy() + 1e-9).tocoo()
    parent = list(range(len(x)))
    label = split.labeled.labels.tolist() + [-1] * len(split.unlabeled)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e in np.argsort(mst.data, kind="stable"):
        a, b = find(int(mst.row[e])), find(int(mst.col[e]))
        if a != b and (label[a] < 0 or label[b] < 0):
            parent[b] = a
            label[a] = max(label[a], label[b])
    return np.array([label[find(i)] for i in range(len(x))])


class GrowthTrainer(StubTrainer):
    """Records synthetic dynamics (``history``) but *learns* with :func:`grow_labels`: the targeted
    attack succeeds when the test image x* (its nearest training image) ends up with the target label."""

    def __call__(self, split, *args, **kwargs):
        res = super().__call__(split, *args, **kwargs)
        labels = grow_labels(split)
        x = torch.cat([split.labeled.float(), split.unlabeled.float()]).flatten(1)
        x_star = split.test.float()[split.attack["info"]["target_image"]].flatten()
        pred = int(labels[torch.cdist(x_star[None], x).argmin()])
        true = split.unlabeled.true_labels.numpy()
        res["test"] = {"targeted": float(pred == split.target),
                       "acc": float((labels[len(split.labeled):] == true).mean())}
        return res


def test_influence_filtering_stops_the_attack(poisoned, tmp_path):
    mask = poisoned.unlabeled_poison_mask
    stub = GrowthTrainer(history=fake_history(mask, seed=1))
    undefended = stub(poisoned, None, None, None, TrainerConfig(max_steps=1), 0, tmp_path / "plain")
    assert undefended["test"]["targeted"] == 1.0  # the interpolation path carries label 0 to x*
    res = InfluenceDefense(every_n_steps=1, threshold=1e-3).run(make_ctx(poisoned, tmp_path, stub))
    assert [c["name"] for c in stub.calls] == ["plain", "record", "train"]
    assert int(stub.calls[2]["split"].unlabeled_poison_mask.sum()) == 0
    assert res["defense_info"]["recall"] == 1.0 and res["defense_info"]["num_removed"] == int(mask.sum())
    assert res["test"]["targeted"] == 0.0 and res["test"]["acc"] > 0.8


def test_clustering_filter_on_pixels_finds_the_interpolation_path(poisoned, tmp_path):
    stub = StubTrainer()
    out, info = ClusteringDefense().filter(poisoned, make_ctx(poisoned, tmp_path, stub))
    assert stub.calls == []  # pixel space needs no model
    assert info["recall"] >= 0.95 and info["fpr"] < 0.01 and info["auroc"] > 0.95
    assert len(out.unlabeled) == info["num_kept"] and int(out.unlabeled_poison_mask.sum()) == info["poisons_kept"]
    json.dumps(info)


def test_clustering_in_feature_space_uses_a_trained_model(poisoned, tmp_path):
    mask = poisoned.unlabeled_poison_mask
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(len(mask), 16, generator=g)
    feats[mask] = 0.01 * torch.randn(int(mask.sum()), 16, generator=g)  # the poisons collapse together
    stub = StubTrainer(features=feats)
    defense = build_defense(Spec("clustering", {"space": "features", "feature_steps": 3, "pca_dim": None}))
    out, info = defense.filter(poisoned, make_ctx(poisoned, tmp_path, stub))
    assert [(c["name"], c["steps"]) for c in stub.calls] == [("features", 3)]
    assert info["recall"] == 1.0 and info["fpr"] == 0.0 and info["space"] == "features"
    check_consistent(poisoned, out, ~mask)


@pytest.mark.parametrize("spec, match", [
    (("influence", {"drop_count": 3, "drop_fraction": 0.1}), "at most one"),
    (("influence", {"every_n_steps": 0}), "every_n_steps"),
    (("influence", {"drop_fraction": 1.5}), "drop_fraction"),
    (("clustering", {"space": "logits"}), "space"),
    (("clustering", {"n_neighbors": 0}), "n_neighbors"),
    (("clustering", {"bogus": 1}), "invalid options"),
])
def test_bad_options_are_one_sentence(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_defense(Spec(*spec))


def test_experiment_rows_with_both_defenses(tmp_path):
    cfg = {
        "name": "tiny_carlini",
        "seeds": [0],
        "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 3, "batch_size": 8, "mu": 2,
                 "eval_batch_size": 500},
        "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": 0.9},
        "trainer": {"max_steps": 3, "val_check_interval": 3, "checkpoint_every_n_steps": 1, "accelerator": "cpu"},
        "algorithms": [{"name": "fixmatch", "init_args": {"threshold": 0.5}}],
        "attacks": [{"name": "interpolation", "init_args": {"target": 0, "budget": 20, "source": "labeled"}}],
        "defenses": [{"name": "influence", "init_args": {"every_n_steps": 1, "drop_count": 20}},
                     {"name": "clustering"}],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["defense"] for r in rows] == ["influence", "clustering"]
    for r in rows:
        info = r["defense_info"]
        assert {"auroc", "recall", "fpr", "num_removed"} <= set(info) and r["targeted_success"] in (0.0, 100.0)
    inf = rows[0]["defense_info"]
    assert inf["num_removed"] == 20 and inf["num_records"] == 3 and Path(inf["histogram"]).is_file()
    assert rows[1]["defense_info"]["auroc"] > 0.9 and rows[1]["defense_info"]["space"] == "pixels"


def test_carlini_digits_config_rows():
    cfg = yaml.safe_load((ROOT / "configs/experiments/carlini_digits.yaml").read_text())
    assert cfg["seeds"] == [0, 1, 2, 3, 4]
    names = [None if d is None else d["name"] for d in cfg["defenses"]]
    assert names == [None, "influence", "clustering"]
    attack = cfg["attacks"][0]
    assert attack["name"] == "interpolation"
    for d in cfg["defenses"][1:]:
        build_defense(Spec(d["name"], d.get("init_args", {})))


def test_influence_defense_lag_option(poisoned, tmp_path):
    mask = poisoned.unlabeled_poison_mask
    stub = StubTrainer(history=fake_history(mask, seed=2))
    out, info = InfluenceDefense(every_n_steps=1, drop_count=int(mask.sum()), lag=0).filter(
        poisoned, make_ctx(poisoned, tmp_path, stub))
    assert info["lag"] == 0 and info["recall"] == 1.0 and int(out.unlabeled_poison_mask.sum()) == 0
    with pytest.raises(ConfigError, match="lag"):
        InfluenceDefense(lag=2)


def test_dynamics_diagnostics_flag_noise_dominated_recordings():
    """Smooth shared trajectories: no warning and the poisons' self-influence is below the clean cut;
    white-noise records: a RuntimeWarning naming the roughness, and no poison below it."""
    import warnings

    from lightning_ssl_backdoor.defenses.influence import influence_scores
    from lightning_ssl_backdoor.defenses.influence_defense import dynamics_diagnostics

    g = torch.Generator().manual_seed(0)
    n, k_rec = 60, 40
    poison = torch.zeros(n, dtype=torch.bool)
    poison[-10:] = True
    # every example drifts smoothly from one random prediction a_j to another b_j; the poisons share theirs
    t = torch.linspace(-3, 3, k_rec, dtype=torch.float64)[:, None, None]
    a, b = (-torch.rand(2, n, 3, generator=g, dtype=torch.float64).log()).unbind(0)  # Dirichlet(1, 1, 1)
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    shift = torch.rand(1, n, 1, generator=g, dtype=torch.float64) * 2 - 1
    a[poison], b[poison], shift[:, poison] = a[-1].clone(), b[-1].clone(), 0.0
    s = torch.sigmoid(2 * (t - shift))
    smooth = (1 - s) * a + s * b
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = dynamics_diagnostics(smooth, influence_scores(smooth, k=3), poison)
    assert info["delta_roughness"] < 0.2 and info["poisons_self_below_percentile"] == 1.0
    noisy = smooth + 0.03 * torch.randn(k_rec, n, 3, generator=g, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="noise-dominated"):
        info = dynamics_diagnostics(noisy, influence_scores(noisy, k=3), poison)
    assert info["delta_roughness"] > 2.5 and info["poisons_self_below_percentile"] == 0.0
    json.dumps(info)


def test_influence_records_once_per_epoch_with_the_ema_model(poisoned, tmp_path):
    """``every_n_steps: epoch``: one record per pass over the attacked unlabeled set at the row's
    unlabeled batch (batch_size * mu), with the EMA weights; the scores are kept for the report."""
    from lightning_ssl_backdoor.data.artifacts import load_arrays

    mask = poisoned.unlabeled_poison_mask
    seen = {}

    class Recording(StubTrainer):
        def __call__(self, split, algorithm, model_args, data, trainer, seed, workdir, **kw):
            for cb in kw.get("extra_callbacks") or []:
                if isinstance(cb, TrainingDynamicsRecorder):
                    seen.update(every=cb.every, use_ema=cb.use_ema)
            return {**super().__call__(split, algorithm, model_args, data, trainer, seed, workdir, **kw), "has_ema": True}

    stub = Recording(history=fake_history(mask))
    ctx = defense_context(poisoned, 0, Spec("fixmatch"), {"arch": "tiny_cnn"},
                          DataConfig(dataset="digits", batch_size=8, mu=3),
                          TrainerConfig(max_steps=700, val_check_interval=100, accelerator="cpu"), tmp_path / "stage",
                          progress=False, trainer_fn=stub)
    defense = InfluenceDefense(every_n_steps="epoch", use_ema=True, drop_count=int(mask.sum()))
    n = len(poisoned.unlabeled)
    assert defense.record_interval(poisoned, ctx) == -(-n // 24) > 1
    out, info = defense.filter(poisoned, ctx)
    assert seen == {"every": -(-n // 24), "use_ema": True}
    assert info["every_n_steps"] == -(-n // 24) and info["record_every"] == "epoch" and info["recorded_weights"] == "ema"
    arrays, meta = load_arrays(info["scores_file"])
    assert meta["kind"] == "influence_scores" and arrays["influence"].shape == (n,)
    assert np.array_equal(arrays["poison"], mask.numpy()) and info["recall"] == 1.0
    # a handful of steps per epoch needs an unlabeled batch; bad values say what to give
    nomu = defense_context(poisoned, 0, Spec("fixmatch"), {"arch": "tiny_cnn"}, DataConfig(dataset="digits", mu=0),
                           TrainerConfig(max_steps=7, val_check_interval=7, accelerator="cpu"), tmp_path / "s2",
                           progress=False, trainer_fn=stub)
    with pytest.raises(ConfigError, match="mu >= 1"):
        defense.record_interval(poisoned, nomu)
    for bad in ("epochs", 0, 2.5):
        with pytest.raises(ConfigError, match="every_n_steps"):
            InfluenceDefense(every_n_steps=bad)
