"""Backdoor Invalidator's parts one by one (BI Table 3; issue 19): each labelled ablation's switches
do what the label says: the filter blurs the training and clean test images (and the triggered test
images only in ``bi-test-filter``), complementary learning gives a stage one, trigger mix-up adds
its loss in stage two, and nothing else runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_ssl_backdoor.data import SSLDataModule
from lightning_ssl_backdoor.defenses import build_defense
from lightning_ssl_backdoor.defenses import invalidator as bi
from lightning_ssl_backdoor.defenses.invalidator_defense import Blur
from lightning_ssl_backdoor.defenses.invalidator_core import ABLATIONS, check_options
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.spec import Spec
from lightning_ssl_backdoor.ssl import SSLModule

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["bi", "bi-test-filter", "bi-filter-only", "bi-complementary-only", "bi-mixup-only", "bi-no-filter"]


def _module(**kw):
    return bi.InvalidatedFixMatch(arch="tiny_cnn", num_classes=10, in_channels=3, weak_pad=1,
                                  model_kwargs={"width": 4}, threshold=0.0, **kw)


def _at_step(monkeypatch, step, total):
    monkeypatch.setattr(bi.InvalidatedFixMatch, "global_step", property(lambda self: step))
    monkeypatch.setattr(bi.InvalidatedFixMatch, "total_steps", lambda self: total)


def test_the_six_labels_and_their_switches():
    assert list(ABLATIONS) == LABELS
    on = {k: {p for p in ("use_filter", "use_complementary", "use_mixup") if v[p]} for k, v in ABLATIONS.items()}
    assert on == {
        "bi": {"use_filter", "use_complementary", "use_mixup"},
        "bi-test-filter": {"use_filter", "use_complementary", "use_mixup"},
        "bi-filter-only": {"use_filter"},
        "bi-complementary-only": {"use_complementary"},
        "bi-mixup-only": {"use_mixup"},
        "bi-no-filter": {"use_complementary", "use_mixup"},
    }
    assert ABLATIONS["bi"]["filter_triggered_test"] is False and ABLATIONS["bi-test-filter"]["filter_triggered_test"] is True
    assert check_options()["filter_triggered_test"] is False  # the default is the authors' deployment


@pytest.mark.parametrize("label", LABELS)
def test_each_ablation_runs_only_its_parts(label, digits_split, add_square, monkeypatch):
    opts = ABLATIONS[label]
    m = _module(**opts, stage_one_steps=5)
    torch.manual_seed(0)
    raw = next(iter(SSLDataModule(split=digits_split, batch_size=4, mu=2, seed=0).train_dataloader()))
    out = m.on_after_batch_transfer(raw, 0)
    x = raw["labeled"]["x"].float() / 255
    filtered = torch.allclose(out["labeled"]["x"], m.filter_images(x))
    assert filtered == opts["use_filter"] and torch.equal(out["labeled"]["x"], x) != opts["use_filter"]
    # stage one exists only with complementary learning
    assert (m.stage_one_length() > 0) == opts["use_complementary"]
    lab, unl = out["labeled"], out["unlabeled"]
    _at_step(monkeypatch, 1, 100)
    first = m.compute_losses(lab, unl)
    assert ("bi_comp_loss" in first) == opts["use_complementary"]
    assert "bi_mix_loss" not in first or not opts["use_complementary"]
    _at_step(monkeypatch, 40, 100)
    second = m.compute_losses(lab, unl)
    assert "bi_comp_loss" not in second
    assert ("bi_mix_loss" in second) == opts["use_mixup"]
    # test time: clean images blurred with the filter; triggered ones only in bi-test-filter
    seen = []
    monkeypatch.setattr(SSLModule, "_eval_step", lambda self, batch, stage: seen.append(batch))
    xt = torch.rand(3, 3, 8, 8)
    m.set_test_trigger(add_square)
    m._eval_step({"x": xt, "y": torch.tensor([1, 2, 3]), "idx": torch.arange(3), "x_trig": add_square(xt)}, "test")
    got = seen[-1]
    if not opts["use_filter"]:
        assert torch.equal(got["x"], xt) and torch.equal(got["x_trig"], add_square(xt))
    elif opts["filter_triggered_test"]:
        assert torch.equal(got["x_trig"], m.filter_images(add_square(xt)))
    else:
        assert torch.equal(got["x_trig"], add_square(m.filter_images(xt)))


def test_cifar10_bi_rows_use_exactly_these_switches():
    cfg = yaml.safe_load((ROOT / "configs/experiments/cifar10_bi.yaml").read_text())
    bis = {d["label"]: d["init_args"] for d in cfg["defenses"] if d and d["name"] == "invalidator"}
    assert list(bis) == LABELS
    for label, args in bis.items():
        assert {k: args.get(k, check_options()[k]) for k in ABLATIONS[label]} == ABLATIONS[label], label
        build_defense(Spec("invalidator", args))


@pytest.mark.parametrize("options,match", [
    ({"use_filter": False, "use_complementary": False, "use_mixup": False}, "no defense"),
    ({"use_mixup": "yes"}, "use_mixup must be true or false"),
])
def test_bad_switches_are_one_sentence(options, match):
    with pytest.raises(ConfigError, match=match) as e:
        build_defense(Spec("invalidator", options))
    assert str(e.value).endswith(".") and str(e.value).count(". ") == 0


def test_bi_and_bi_test_filter_share_one_training_through_the_runner(tmp_path):
    """``filter_triggered_test`` is a test-time choice: the two rows train once (a shared folder
    beside the undefended row's) and differ only in how the triggered test images are made; the
    clean accuracy is the same blurred-input model's, to the digit."""
    import json

    from lightning_ssl_backdoor.cli import main

    setting = {
        "name": "bi-share", "seeds": [0],
        "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 10, "num_unlabeled": 40,
                 "batch_size": 8, "mu": 1, "eval_batch_size": 500},
        "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 4}, "ema_decay": 0.9, "lr": 0.05},
        "trainer": {"max_steps": 12, "val_check_interval": 1000, "checkpoint_every_n_steps": 1000, "accelerator": "cpu"},
        "algorithms": ["fixmatch"],
        "attacks": [{"name": "badnets", "init_args": {"target": 0, "budget_rate": 0.1,
                                                      "trigger": {"name": "badnets", "size": 2, "color": "white"}}}],
        "defenses": [{"name": "invalidator", "label": label, "init_args": {**ABLATIONS[label], "stage_one_steps": 4}}
                     for label in ("bi", "bi-test-filter")],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(setting))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    rows = {r["defense"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    trained = [p.parent.name for p in (out / "cache").rglob("metrics.json")]
    assert len(trained) == 1 and trained[0].startswith("invalidator-"), trained
    a, b = rows["bi"], rows["bi-test-filter"]
    assert a["defense_info"]["training"] == b["defense_info"]["training"] == trained[0]
    assert a["clean_accuracy"] == pytest.approx(b["clean_accuracy"], abs=1e-6)
    assert b["defense_info"]["options"]["filter_triggered_test"] is True


def test_the_test_time_blur_is_the_training_filter():
    m = _module()
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(Blur(1.0)(x), m.filter_images(x))
