"""DBD (Huang et al., ICLR 2022): SimCLR views and module, the frozen-backbone SCE head, the
lowest-loss ranking, MixMatch fine-tuning with re-ranking, and the chained defense in the runner."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import pytest
from lightning_ssl_backdoor._lightning import pl
import torch
import yaml
from torch import nn

import lightning_ssl_backdoor.pipeline.training as training
from lightning_ssl_backdoor.attacks.poison_label import BadNetsAttack
from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.data import PoisonedSplit, SSLDataModule, make_split
from lightning_ssl_backdoor.defenses.dbd import (
    DBD,
    DBDFineTune,
    LinearHead,
    SimCLR,
    SimCLRAugment,
    gaussian_blur,
    load_backbone_state,
    load_classifier_state,
    lowest_fraction,
    rank_by_loss,
    resized_crop_matrices,
    robust_loss_fn,
    save_model_state,
    training_images,
)
from lightning_ssl_backdoor.data.streams import EpochPermutationIndex
from lightning_ssl_backdoor.defenses.dbd.draws import DBDFineTuneData, draw_seed
from lightning_ssl_backdoor.defenses.dbd.views import apply_affine
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import nt_xent_loss, symmetric_cross_entropy
from lightning_ssl_backdoor.models import build_model
from lightning_ssl_backdoor.defenses import defense_class

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(arch="tiny_cnn", num_classes=10, in_channels=3, weak_pad=1, model_kwargs={"width": 4})


@pytest.fixture(scope="module")
def poisoned_digits():
    """Digits 8x8, 12 labels per class, BadNets relabels 10% of the labeled set to class 3."""
    from lightning_ssl_backdoor.data.readers import read_digits

    split = make_split(read_digits("train", image_size=8), read_digits("test", image_size=8),
                       labels_per_class=12, seed=0, num_unlabeled=200)
    return BadNetsAttack(target=3, budget_rate=0.1, progress=False).poison(split)


def _trainer(steps: int, tmp_path: Path, **kw) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=str(tmp_path), **kw)


# ------------------------------------------------------------------------------------ SimCLR views
def test_simclr_views_are_per_sample_and_shape_preserving():
    x = torch.rand(1, 3, 16, 16).expand(32, -1, -1, -1).contiguous()
    aug = SimCLRAugment()
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype and 0.0 <= y.min() and y.max() <= 1.0
    flat = y.flatten(1)
    diffs = torch.cdist(flat, flat)
    assert (diffs[~torch.eye(32, dtype=torch.bool)] > 1e-3).all()  # every image its own view
    assert not torch.allclose(aug(x), aug(x))  # two calls: two views
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(aug(x, generator=g1), aug(x, generator=g2))
    gray = aug(torch.rand(6, 1, 12, 12))
    assert gray.shape == (6, 1, 12, 12)


def test_simclr_view_components():
    x = torch.rand(5, 3, 8, 8)
    off = SimCLRAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    assert torch.allclose(off(x), x, atol=1e-5)
    flip = SimCLRAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    assert torch.allclose(flip(x), x.flip(-1), atol=1e-5)
    gray = SimCLRAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=1.0, blur_p=0.0)(x)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    # a crop of area fraction s covers s of the image: on a left-to-right ramp, its range shrinks
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(200, 3, 64, 64).contiguous()
    theta = resized_crop_matrices(200, 64, 64, scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_p=0.0)
    crop = apply_affine(ramp, theta)
    span = crop[:, 0, 0, -1] - crop[:, 0, 0, 0]
    assert torch.allclose(span, torch.full_like(span, 0.5 * 63 / 64), atol=0.02)
    # blur: kernels sum to one (constants stay), a bigger sigma smooths more
    const = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([0.5, 2.0]), 3), const, atol=1e-6)
    spike = torch.zeros(2, 1, 9, 9)
    spike[:, :, 4, 4] = 1.0
    out = gaussian_blur(spike, torch.tensor([0.3, 2.0]), 5)
    assert out[0, 0, 4, 4] > out[1, 0, 4, 4] and torch.allclose(out.sum((1, 2, 3)), torch.ones(2), atol=1e-5)


def test_bad_configs_raise_config_errors():
    with pytest.raises(ConfigError, match="scale"):
        SimCLRAugment(scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="jitter_p"):
        SimCLRAugment(jitter_p=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        SimCLR(temperature=0.0, **TINY_MODEL)
    with pytest.raises(ConfigError, match="loss"):
        LinearHead(loss="hinge", **TINY_MODEL)
    with pytest.raises(ConfigError, match="filter_rate"):
        DBDFineTune(filter_rate=0.0, **TINY_MODEL)
    with pytest.raises(ConfigError, match="unlabeled_ratio"):
        DBDFineTune(unlabeled_ratio=0, **TINY_MODEL)
    with pytest.raises(ConfigError, match="optimizer"):
        DBDFineTune(optimizer="rmsprop", **TINY_MODEL)
    with pytest.raises(ConfigError, match="threat_model"):
        DBD(threat_model="labels")
    with pytest.raises(ConfigError, match="filter_rate"):
        DBD(filter_rate=1.0)
    with pytest.raises(ConfigError, match="bogus"):
        DBD(simclr={"bogus": 1})
    with pytest.raises(ConfigError, match="init_checkpoint"):
        DBD(finetune={"init_checkpoint": "x.pt"})
    with pytest.raises(ConfigError, match="steps"):
        DBD(linear={"steps": 0})
    with pytest.raises(ConfigError, match="options"):
        robust_loss_fn("sce", q=0.5)
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone_state("/nonexistent/backbone.pt")
    assert defense_class("dbd") is DBD


def test_finetune_optimizer_is_adam_by_default_or_the_zoos_sgd():
    adam = DBDFineTune(**TINY_MODEL).configure_optimizers()
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 0.002
    sgd = DBDFineTune(optimizer="sgd", lr=0.03, weight_decay=5e-4, **TINY_MODEL).configure_optimizers()
    opt = sgd["optimizer"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.03 and opt.defaults["momentum"] == 0.9
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 5e-4]  # BatchNorm and biases undecayed, as the zoo's supervised rows
    assert sgd["lr_scheduler"]["interval"] == "step"


# ----------------------------------------------------------------------------------- SimCLR module
def test_simclr_step_uses_all_images_and_trains_backbone(poisoned_digits, tmp_path):
    torch.manual_seed(0)
    m = SimCLR(**{**TINY_MODEL, "in_channels": 1})  # digits are grey
    assert [l.out_features for l in m.projector.net if isinstance(l, nn.Linear)] == [16, 128]
    raw = next(iter(SSLDataModule(split=poisoned_digits, batch_size=4, mu=2).train_dataloader()))
    out = m.on_after_batch_transfer(raw, 0)
    assert out["x1"].shape == (12, 1, 8, 8) and not torch.allclose(out["x1"], out["x2"])
    loss = m.training_step(out, 0)
    z = m.project(torch.cat([out["x1"], out["x2"]]))
    assert torch.allclose(loss, nt_xent_loss(z[:12], z[12:], 0.5), atol=1e-5)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    _trainer(3, tmp_path).fit(m, datamodule=SSLDataModule(split=poisoned_digits, batch_size=8, mu=1))
    after = m.model.state_dict()
    assert not torch.equal(before["backbone.block1.0.weight"], after["backbone.block1.0.weight"])
    assert torch.equal(before["head.weight"], after["head.weight"])  # labels never used
    path = save_model_state(m.model, tmp_path / "simclr.pt")
    assert torch.equal(load_backbone_state(path)["block1.0.weight"], after["backbone.block1.0.weight"])
    # usable alone: `ssl-backdoor fit --model lightning_ssl_backdoor.defenses.dbd.SimCLR ...`
    from lightning_ssl_backdoor.cli import make_cli

    cli = make_cli(["-c", str(ROOT / "configs/data/digits.yaml"),
                    "--model", "lightning_ssl_backdoor.defenses.dbd.SimCLR",
                    "--model.init_args.arch", "tiny_cnn", "--model.init_args.temperature", "0.2",
                    "--data.image_size", "8", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert isinstance(cli.model, SimCLR) and cli.model.hparams.temperature == 0.2 and cli.model.hparams.lr == 0.4


def test_checkpoint_formats_and_mismatch(tmp_path):
    model = build_model("tiny_cnn", 10, width=4)
    bare = tmp_path / "bare.pt"
    torch.save(model.backbone.state_dict(), bare)
    lightning = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, lightning)
    whole = save_model_state(model, tmp_path / "whole.pt")
    for p in (bare, lightning, whole):
        st = load_backbone_state(p)
        assert set(st) == set(model.backbone.state_dict())
    assert set(load_classifier_state(lightning)) == set(model.state_dict())
    with pytest.raises(ConfigError, match="does not fit"):
        LinearHead(backbone_checkpoint=str(bare), arch="tiny_cnn", num_classes=10, model_kwargs={"width": 8})


# ----------------------------------------------------------------------------- stage 2 and ranking
def test_frozen_backbone_weights_and_bn_statistics_unchanged(poisoned_digits, tmp_path):
    torch.manual_seed(0)
    src = build_model("tiny_cnn", 10, width=4)
    with torch.no_grad():  # non-trivial BN statistics, so a change would be visible
        for mod in src.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    ckpt = save_model_state(src, tmp_path / "backbone.pt")
    m = LinearHead(backbone_checkpoint=str(ckpt), **TINY_MODEL)
    frozen = {k: v.clone() for k, v in m.model.backbone.state_dict().items()}
    assert all(torch.equal(frozen[k], v) for k, v in src.backbone.state_dict().items())
    head = m.model.head.weight.clone()
    _trainer(4, tmp_path).fit(m, datamodule=SSLDataModule(split=poisoned_digits, batch_size=16, mu=0))
    m.train()
    assert not m.model.backbone.training and m.model.head.training
    for k, v in m.model.backbone.state_dict().items():
        assert torch.equal(v, frozen[k]), f"{k} changed"  # weights, running_mean/var, num_batches
    assert not torch.equal(head, m.model.head.weight)
    assert all(not p.requires_grad for p in m.model.backbone.parameters())
    opt = m.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 0.002


class _LookupModel(nn.Module):
    """Logits read from the image: row 0 of channel 0 holds them (times 10); has a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(1)
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.bn(x[:, 0, 0, :1])  # would move the running mean in train mode
        return x[:, 0, 0, :4] * 10.0 + self.w


def test_ranking_selects_the_lowest_loss_fraction():
    g = torch.Generator().manual_seed(0)
    n = 21
    images = torch.randint(0, 256, (n, 1, 1, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=g)
    model = _LookupModel().train()
    losses, high = rank_by_loss(model, images, labels, filter_rate=0.5)
    ref = symmetric_cross_entropy(images[:, 0, 0].float() / 255 * 10, labels, 0.1, 1.0, reduction="none")
    assert torch.allclose(losses, ref, atol=1e-5)
    assert int(high.sum()) == round(0.5 * n)
    assert losses[high].max() <= losses[~high].min()
    assert model.training and torch.equal(model.bn.running_mean, torch.zeros(1))  # eval during ranking
    # ties go to lower indices; fractions round
    tied = lowest_fraction(torch.tensor([1.0, 0.0, 1.0, 1.0, 2.0]), 0.6)
    assert tied.tolist() == [True, True, True, False, False]
    _, high_gce = rank_by_loss(model, images, labels, 0.25, loss="gce", loss_kwargs={"q": 0.7})
    assert int(high_gce.sum()) == 5
    # per class: the lowest half within each given label
    _, high_pc = rank_by_loss(model, images, labels, filter_rate=0.5, per_class=True)
    for c in range(4):
        rows = torch.nonzero(labels == c).flatten()
        assert int(high_pc[rows].sum()) == round(0.5 * len(rows))
        assert losses[rows][high_pc[rows]].max() <= losses[rows][~high_pc[rows]].min()


def test_training_images_dedupes_labeled_copies(poisoned_digits):
    from lightning_ssl_backdoor.data.readers import read_digits

    train = read_digits("train", image_size=8)
    split = make_split(train, read_digits("test", image_size=8), labels_per_class=3, include_labeled_in_unlabeled=True)
    imgs = training_images(split)
    assert len(imgs) == len(train) and (imgs.labels == -1).all()
    assert len(training_images(poisoned_digits)) == len(poisoned_digits.labeled) + len(poisoned_digits.unlabeled)


# ------------------------------------------------------------------------------ stage 3 fine-tuning
@pytest.mark.parametrize("per_class", [False, True])
def test_rerank_names_and_warns_about_a_label_the_global_ranking_empties(poisoned_digits, per_class):
    """A head that puts every image of label 0 at a huge loss: the global 50% ranking keeps none of
    them (recorded in ``labels_without_high``, warned once); the per-class ranking keeps half."""
    m = DBDFineTune(per_class=per_class, **TINY_MODEL)
    m._pool = poisoned_digits.labeled
    m._pool_poison = poisoned_digits.labeled_poison_mask.clone()
    with torch.no_grad():
        m.model.head.weight.zero_()
        m.model.head.bias.fill_(0.0)
        m.model.head.bias[0] = -50.0
    labels = poisoned_digits.labeled.labels
    with pytest.warns(RuntimeWarning, match=r"kept no image of given label\(s\) \[0\]") if not per_class else _no_warning():
        entry = m.rerank(0)
    if per_class:
        assert entry["labels_without_high"] == [] and entry["high_per_label"][0] == round(0.5 * int((labels == 0).sum()))
    else:
        assert entry["labels_without_high"] == [0] and entry["high_per_label"][0] == 0
        with _no_warning():  # once per run
            assert m.rerank(1)["labels_without_high"] == [0]


@contextlib.contextmanager
def _no_warning():
    """Turn any RuntimeWarning inside the block into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def test_finetune_reranks_every_epoch_and_draws_from_the_partition(poisoned_digits, tmp_path):
    torch.manual_seed(0)
    m = DBDFineTune(rerank_every=2, unlabeled_ratio=2, **TINY_MODEL)
    seen = []
    orig = m.resolve_draw

    def spy(draw, device):
        out = orig(draw, device)
        lab, unl = out["labeled"]["idx"].clone(), out["unlabeled"]["idx"].clone()
        seen.append((int(m.global_step), m._high.clone(), lab, unl, draw))
        return out

    m.resolve_draw = spy
    dm = DBDFineTuneData(split=poisoned_digits, batch_size=8, mu=0)
    _trainer(5, tmp_path).fit(m, datamodule=dm)
    n_pool = len(poisoned_digits.labeled)
    assert [h["step"] for h in m.filter_history] == [0, 2, 4]
    for h in m.filter_history:
        assert h["num_ranked"] == n_pool and h["num_high"] == n_pool // 2
        assert h["num_poisons"] == int(poisoned_digits.labeled_poison_mask.sum())
        assert 0 <= h["poisons_in_high"] <= h["num_poisons"]
    labels = poisoned_digits.labeled.labels
    for h, high in zip(m.filter_history, [s[1] for s in seen if s[0] % 2 == 0]):
        assert h["high_per_label"] == torch.bincount(labels[high].long(), minlength=10).tolist()
    for step, high, li, ui, draw in seen:
        assert int(draw["step"]) == step and int(draw["ranked_at"]) == step - step % 2  # the loader's draw
        assert high[li].all() and len(li) == 8 and len(ui) == 16  # labeled only from the high set
        in_pool = ui < n_pool
        assert (~high[ui[in_pool]]).all()  # unlabeled: low-credible pool samples and extra images
        assert (ui < n_pool + len(poisoned_digits.unlabeled)).all()
        # the draw is the one DBD's seeded per-epoch permutations make (same batches as before the
        # loader carried them): positions (step - ranked_at) * B onwards of each permutation
        ranked_at = step - step % 2
        hi = torch.nonzero(high).flatten()
        u_space = torch.cat([torch.nonzero(~high).flatten(), n_pool + torch.arange(len(poisoned_digits.unlabeled))])
        seed = draw_seed(0, ranked_at, 0)
        k = step - ranked_at
        assert torch.equal(li, hi[EpochPermutationIndex(len(hi), 2 * seed).take(k * 8, 8)])
        assert torch.equal(ui, u_space[EpochPermutationIndex(len(u_space), 2 * seed + 1).take(k * 16, 16)])
    ckpt: dict = {}
    m.on_save_checkpoint(ckpt)
    fresh = DBDFineTune(rerank_every=2, **TINY_MODEL)
    fresh.on_load_checkpoint(ckpt)
    assert torch.equal(fresh._high, m._high) and fresh.filter_history == m.filter_history


def test_finetune_uses_the_loaders_draw_and_refuses_plain_batches(poisoned_digits, tmp_path):
    m = DBDFineTune(rerank_every=0, **TINY_MODEL)
    _trainer(1, tmp_path).fit(m, datamodule=DBDFineTuneData(split=poisoned_digits, batch_size=4, mu=0))
    stream = m.draw_stream(4)
    first = next(iter(stream))["draw"]
    assert int(first["step"]) == 0 and first["labeled"].shape == (4,) and first["unlabeled"].shape == (4,)
    # any positions the loader hands in are what the step trains on
    draw = {**first, "labeled": torch.tensor([0, 0, 1, 2]), "unlabeled": torch.tensor([5, 5, 6, 7])}
    out = m.on_after_batch_transfer({"draw": draw}, 0)
    hi = torch.nonzero(m._high).flatten()
    assert torch.equal(out["labeled"]["idx"], hi[torch.tensor([0, 0, 1, 2])])
    assert torch.equal(out["labeled"]["y"], poisoned_digits.labeled.labels[hi[torch.tensor([0, 0, 1, 2])]])
    with pytest.raises(ConfigError, match="another split"):
        m.on_after_batch_transfer({"draw": {**first, "ranked_at": torch.tensor(3)}}, 0)
    plain = next(iter(SSLDataModule(split=poisoned_digits, batch_size=4, mu=0).train_dataloader()))
    with pytest.raises(ConfigError, match="DBDFineTuneData"):
        m.on_after_batch_transfer(plain, 0)


def test_finetune_without_ranking_trusts_the_labeled_set(poisoned_digits, tmp_path):
    clean = PoisonedSplit(labeled=poisoned_digits.labeled, unlabeled=poisoned_digits.unlabeled,
                          test=poisoned_digits.test, labeled_indices=poisoned_digits.labeled_indices,
                          unlabeled_indices=poisoned_digits.unlabeled_indices, trigger=poisoned_digits.trigger,
                          target=3, attack={"pool": "unlabeled"})
    m = DBDFineTune(rank=False, **TINY_MODEL)
    _trainer(2, tmp_path).fit(m, datamodule=DBDFineTuneData(split=clean, batch_size=8, mu=0))
    assert m.filter_history[0]["num_high"] == len(clean.labeled) and m._high.all()
    assert DBD().resolve_threat_model(clean) == "poisoned_unlabeled"
    assert DBD().resolve_threat_model(poisoned_digits) == "poisoned_labels"


# ------------------------------------------------------------------------------ the chained defense
TINY = {
    "name": "tiny_dbd",
    "seeds": [0],
    "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 12, "num_unlabeled": 200,
             "batch_size": 8, "mu": 1, "eval_batch_size": 500},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 4}, "ema_decay": 0.9, "lr": 0.03},
    "trainer": {"max_steps": 4, "val_check_interval": 2, "checkpoint_every_n_steps": 2, "accelerator": "cpu"},
    "algorithms": ["mixmatch"],
    "attacks": [{"name": "badnets", "init_args": {"target": 3, "budget_rate": 0.1}}],
    "defenses": [{"name": "dbd", "init_args": {"simclr": {"steps": 3, "batch_size": 32},
                                               "linear": {"steps": 3, "batch_size": 16},
                                               "finetune": {"batch_size": 8, "rerank_every": 2}}},
                 {"name": "dbd", "label": "dbd-pc", "init_args": {
                     "filter_per_class": True, "simclr": {"steps": 3, "batch_size": 32},
                     "linear": {"steps": 2, "batch_size": 16}, "finetune": {"steps": 2, "batch_size": 8}}}],
}


def test_dbd_end_to_end_through_the_runner_and_cache(tmp_path, monkeypatch):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(cfg), "--output", str(out), "--no_progress", "true"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    row, pc = rows
    assert row["defense"] == "dbd" and pc["defense"] == "dbd-pc" and pc["defense_info"]["filter_per_class"]
    assert row["defense"] == "dbd" and 0 <= row["clean_accuracy"] <= 100 and 0 <= row["asr"] <= 100
    assert row["steps"] == 4 and row["evaluated_weights"] == "raw"  # stage 3 keeps no EMA by default
    info = row["defense_info"]
    assert info["threat_model"] == "poisoned_labels" and info["stage1"]["steps"] == 3
    assert info["stage1"]["num_images"] == 120 + 200 and info["stage2"]["steps"] == 3
    assert {"acc", "asr", "asr_cond"} <= set(info["stage2"]["test"])
    assert [f["step"] for f in info["filtering"]] == [0, 2]
    assert info["filtering"][0]["num_poisons"] == 12 and info["filtering"][0]["num_high"] == 60
    assert info["final_poisons_in_high"] == f"{info['filtering'][-1]['poisons_in_high']}/60"
    folders = [Path(info[s]["folder"]) for s in ("stage1", "stage2", "stage3")]
    for f in folders:
        assert (f / "model.pt").is_file() and (f / "metrics.json").is_file()
    stage_dir = folders[1].parent
    assert folders[2].parent == stage_dir and folders[1].name == "stage2_linear"
    assert folders[0].parent.name.startswith("dbd_simclr-")  # shared by rows that differ later
    assert pc["defense_info"]["stage1"]["folder"] == str(folders[0])
    assert len(list((out / "cache").glob("dbd_simclr-*"))) == 1
    assert Path(pc["defense_info"]["stage2"]["folder"]).parent != stage_dir

    # a second run reuses every stage (bringing one's own backbone: see the ASR test below)
    def no_fit(*a, **k):
        raise AssertionError("a cached stage was trained again")

    monkeypatch.setattr(training.pl.Trainer, "fit", no_fit)
    assert main(["experiment", "-c", str(cfg), "--output", str(out), "--no_progress", "true"]) == 0
    again = json.loads((out / "results.json").read_text())["rows"][0]
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 2
    assert again["clean_accuracy"] == row["clean_accuracy"] and again["defense_info"]["filtering"] == info["filtering"]


def test_dbd_config_files_parse():
    exp = yaml.safe_load((ROOT / "configs/experiments/dbd_digits.yaml").read_text())
    dbds = [d for d in exp["defenses"] if d and d["name"] == "dbd"]
    assert len(dbds) == 2 and dbds[0]["init_args"]["filter_per_class"] and not dbds[1]["init_args"]["filter_per_class"]
    for d in dbds:
        DBD(**d["init_args"])
    spec = yaml.safe_load((ROOT / "configs/defense/dbd.yaml").read_text())
    assert spec["name"] == "dbd"
    DBD(**spec["init_args"])
    assert exp["attacks"][0]["init_args"]["budget_rate"] == 0.05


# ------------------------------------------------------------------------------ DBD lowers the ASR
def _pattern_set(n: int, seed: int):
    """4 classes of 8x8 texture (horizontal / vertical / diagonal stripes, a disc), random tint."""
    from lightning_ssl_backdoor.data import ImageSet

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    r = torch.arange(8).view(8, 1).expand(8, 8).float()
    c = r.t()
    phase = torch.randint(0, 2, (n, 1, 1), generator=g).float()
    pats = torch.stack([(r + phase) % 2, (c + phase) % 2, (((r + c + phase) % 4) < 2).float(),
                        (((r - 3.5) ** 2 + (c - 3.5) ** 2) < 6).float().expand(n, 8, 8)], 1)
    tint = 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
    x = 0.15 + 0.7 * pats[torch.arange(n), y].unsqueeze(1) * tint + 0.05 * torch.randn(n, 3, 8, 8, generator=g)
    return ImageSet((x.clamp(0, 1) * 255).round().to(torch.uint8), y, ["h", "v", "d", "o"])


def test_dbd_lowers_asr_on_a_tiny_poison_label_setting(tmp_path):
    """BadNets relabels 20% of the labeled set; plain supervised training learns the backdoor. DBD
    runs all three stages on the poisoned split: SimCLR (250 steps on the 400 training images,
    labels removed, poisons included), the frozen-backbone SCE head and MixMatch fine-tuning; it
    keeps every poison out of the high-credible set and ends with a low ASR and the same clean
    accuracy. Then a pre-trained backbone (``backbone_checkpoint``) skips stage 1, and
    ``use_unlabeled: auto`` under poisoned labels trains on the labeled set alone."""
    from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig
    from lightning_ssl_backdoor.pipeline.defense_stage import defense_context
    from lightning_ssl_backdoor.pipeline.training import train_row

    split = make_split(_pattern_set(400, 0), _pattern_set(200, 1), labels_per_class=60, seed=0)
    split = BadNetsAttack(target=0, budget_rate=0.2, trigger={"name": "badnets", "size": 2, "color": "white"},
                          progress=False).poison(split)
    model = {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": None, "lr": 0.1}
    data = DataConfig(dataset="synthetic", labels_per_class=None, batch_size=32, mu=1, eval_batch_size=500)
    trainer = TrainerConfig(max_steps=100, val_check_interval=1000, accelerator="cpu", checkpoint_every_n_steps=1000)
    none = train_row(split, Spec("supervised"), model, data, trainer, 0, tmp_path / "none", enable_progress_bar=False)
    ctx = defense_context(split, 0, Spec("supervised"), model, data, trainer, tmp_path / "dbd", progress=False)
    res = DBD(simclr={"steps": 250, "batch_size": 128, "lr": 0.1},
              linear={"steps": 60, "batch_size": 64, "lr": 0.01},
              finetune={"steps": 60, "batch_size": 32, "rerank_every": 10}).run(ctx)
    assert none["test"]["asr"] >= 0.8 and none["test"]["acc"] >= 0.9
    assert res["test"]["asr"] <= 0.1 and res["test"]["acc"] >= none["test"]["acc"] - 0.1
    info = res["defense_info"]
    assert all(f["poisons_in_high"] == 0 and f["num_poisons"] == 48 for f in info["filtering"])
    assert res["steps"] == 60 and res["has_ema"] is False
    assert info["stage1"]["steps"] == 250 and info["stage1"]["num_images"] == 400 and info["uses_unlabeled"]
    simclr = Path(info["stage1"]["folder"])
    assert simclr.parent.name.startswith("dbd_simclr-") and (simclr / "model.pt").is_file()
    assert not (simclr.parent / ".stage1.simclr.lock").exists()  # the shared stage's lock is released

    # a brought backbone skips stage 1; use_unlabeled auto: labeled set alone under poisoned labels
    ctx2 = defense_context(split, 0, Spec("supervised"), model, data, trainer, tmp_path / "dbd2", progress=False)
    res2 = DBD(backbone_checkpoint=str(simclr / "model.pt"), use_unlabeled="auto", linear={"steps": 2, "batch_size": 64},
               finetune={"steps": 2, "batch_size": 32}).run(ctx2)
    assert res2["defense_info"]["stage1"] == {"provided_backbone": str(simclr / "model.pt")}
    assert res2["defense_info"]["uses_unlabeled"] is False
    assert not (tmp_path / "dbd2" / "stage1_simclr").exists() and not list(tmp_path.glob("dbd2_simclr-*"))


def test_use_unlabeled_chooses_the_defenders_images(poisoned_digits):
    from lightning_ssl_backdoor.defenses.dbd.defense import _labeled_only

    assert DBD().uses_unlabeled("poisoned_labels") and DBD(use_unlabeled=True).uses_unlabeled("poisoned_unlabeled")
    assert not DBD(use_unlabeled=False).uses_unlabeled("poisoned_unlabeled")
    auto = DBD(use_unlabeled="auto")
    assert not auto.uses_unlabeled("poisoned_labels") and auto.uses_unlabeled("poisoned_unlabeled")
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="use_unlabeled"):
            DBD(use_unlabeled=bad)
    only = _labeled_only(poisoned_digits)
    assert len(only.unlabeled) == 0 and len(only.unlabeled_indices) == 0 and len(only.unlabeled_poison_mask) == 0
    assert torch.equal(only.labeled.images, poisoned_digits.labeled.images)
    assert torch.equal(only.labeled_poison_mask, poisoned_digits.labeled_poison_mask)
    assert len(training_images(only)) == len(poisoned_digits.labeled)


def test_waiting_lock_waits_for_a_live_holder_then_takes_over(tmp_path):
    """The shared SimCLR stage's lock: a second row waits while the holder lives, then proceeds."""
    import subprocess
    import sys
    import time

    from lightning_ssl_backdoor.errors import OutputLockedError
    from lightning_ssl_backdoor.io_lock import lock_path, waiting_lock
    import socket

    target = tmp_path / "stage1.simclr"
    import threading

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    reaper = threading.Thread(target=holder.wait)  # an exited, unreaped child would still look alive
    reaper.start()
    try:
        lock_path(target).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": 0}))
        with pytest.raises(OutputLockedError):
            with waiting_lock(target, poll_seconds=0.05, timeout_seconds=0.2):
                pass
        t0 = time.monotonic()
        with waiting_lock(target, poll_seconds=0.05) as path:
            waited = time.monotonic() - t0
            assert json.loads(path.read_text())["pid"] != holder.pid
        assert waited > 0.3 and not lock_path(target).exists()
    finally:
        reaper.join()
