"""The SSL victim zoo: each algorithm's loss against a brute-force reference, its config checks,
the shared ramp / frozen-BatchNorm helpers, FlexMatch's thresholds on a hand-computed example,
VAT's perturbation, the self-training driver, and a 2-step CLI run of every ``*_small.yaml``."""

from __future__ import annotations

import copy
import glob
import math
from pathlib import Path

import pytest
from lightning_ssl_backdoor._lightning import pl
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lightning_ssl_backdoor.data import PoisonedSplit, SSLDataModule
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.ssl import (
    ALGORITHMS, UDA, VAT, FlexMatch, MeanTeacher, MixMatch, PiModel, PseudoLabel, SSLModule,
)
from lightning_ssl_backdoor.ssl.flexmatch import class_thresholds, learning_effect, updated_learning_effect
from lightning_ssl_backdoor.augment import CropScaleVFlip
from lightning_ssl_backdoor.defenses.self_training import SelfTraining, SelfTrainingConfig, self_train
from lightning_ssl_backdoor.ssl.vat import l2_normalize

ROOT = Path(__file__).resolve().parents[1]
ZOO = ("pseudo_label", "pi_model", "mean_teacher", "vat", "mixmatch", "uda", "flexmatch")


def _module(cls, **kw):
    args = dict(arch="tiny_cnn", num_classes=10, in_channels=3, weak_pad=1, model_kwargs={"width": 4})
    args.update(kw)
    return cls(**args)


@pytest.fixture(scope="module")
def batch_factory(digits_split):
    def make(m, b=4, mu=2, seed=0):
        torch.manual_seed(seed)
        raw = next(iter(SSLDataModule(split=digits_split, batch_size=b, mu=mu, seed=seed).train_dataloader()))
        out = m.on_after_batch_transfer(raw, 0)
        return out["labeled"], out["unlabeled"]

    return make


def _at_step(monkeypatch, cls, step, total):
    monkeypatch.setattr(cls, "global_step", property(lambda self: step))
    monkeypatch.setattr(cls, "total_steps", lambda self: total)


def _median_confidence(m, *xs, part=-1):
    """A threshold that splits ``xs[part]`` of this concatenated (BatchNorm-coupled) batch in two."""
    with torch.no_grad():
        logits = m.forward_cat(*xs)[part]
    return float(logits.softmax(1).max(1).values.median())


def _bn_state(model):
    return [b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n]


# ---------------------------------------------------------------- registry and config checks
def test_registry_keeps_existing_and_adds_the_zoo():
    assert {"supervised", "fixmatch", *ZOO} <= set(ALGORITHMS)
    for name in ZOO:
        assert issubclass(ALGORITHMS[name], SSLModule)


@pytest.mark.parametrize(
    "cls,kw,match",
    [
        (PseudoLabel, {"threshold": 1.2}, "threshold"),
        (PseudoLabel, {"rampup_ratio": 2.0}, "rampup_ratio"),
        (PiModel, {"rampup_shape": "cubic"}, "rampup_shape"),
        (MeanTeacher, {"ema_decay": None}, "ema_decay"),
        (VAT, {"eps": 0.0}, "eps"),
        (VAT, {"power_iterations": 0}, "power_iterations"),
        (VAT, {"eps_space": "zca"}, "eps_space"),
        (MixMatch, {"num_augmentations": 0}, "num_augmentations"),
        (MixMatch, {"temperature": 0.0}, "temperature"),
        (UDA, {"tsa": "cosine"}, "tsa"),
        (UDA, {"threshold": -0.1}, "threshold"),
        (FlexMatch, {"mapping": "concave"}, "mapping"),
    ],
)
def test_config_checks_raise_one_sentence(cls, kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        _module(cls, **kw)
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")


def test_ramp_helper(monkeypatch):
    m = _module(PiModel)
    for step, lin, sig in [(0, 0.0, math.exp(-5.0)), (25, 0.5, math.exp(-5 * 0.25)), (50, 1.0, 1.0), (80, 1.0, 1.0)]:
        _at_step(monkeypatch, PiModel, step, 125)
        assert m.ramp(0.4, "linear") == pytest.approx(lin)
        assert m.ramp(0.4, "sigmoid") == pytest.approx(sig)
    assert m.ramp(0.0, "linear") == 1.0


def test_frozen_bn_stats_keeps_running_statistics():
    m = _module(PiModel)
    m.train()
    before = _bn_state(m.model)
    x = torch.rand(6, 3, 8, 8)
    with m.frozen_bn_stats(m.model):
        y = m.model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_state(m.model)))
    y.sum().backward()  # the graph is intact
    assert torch.allclose(y, m.model(x), atol=1e-5)  # batch statistics were used inside the block
    assert not all(torch.equal(a, b) for a, b in zip(before, _bn_state(m.model)))


# --------------------------------------------------------------------------- losses vs references
def test_pseudo_label_loss_mask_and_ramp(batch_factory, monkeypatch):
    m = _module(PseudoLabel, threshold=0.12, lambda_u=2.0, rampup_ratio=0.5)
    lab, unl = batch_factory(m)
    tau = m.hparams.threshold = _median_confidence(m, lab["weak"], unl["weak"])
    _at_step(monkeypatch, PseudoLabel, 10, 100)  # ramp 10 / 50 = 0.2
    out = m.compute_losses(lab, unl)
    logits = m.model(torch.cat([lab["weak"], unl["weak"]]))
    ll, lu = logits[:4], logits[4:]
    per = []
    for row in lu:
        p = row.softmax(0)
        per.append(F.cross_entropy(row[None], p.argmax()[None]) if p.max() >= tau else torch.tensor(0.0))
    ref = F.cross_entropy(ll, lab["y"]) + 2.0 * 0.2 * torch.stack(per).mean()
    assert torch.allclose(out["loss"], ref, atol=1e-5)
    assert torch.equal(out["u_mask"], lu.softmax(1).max(1).values >= tau)
    assert 0 < out["u_mask"].sum() < len(lu), "pick a threshold that masks some samples"
    assert out["unsup_weight"] == pytest.approx(0.4)


def test_pi_model_loss(batch_factory):
    m = _module(PiModel, lambda_u=3.0, rampup_ratio=0.0)
    lab, unl = batch_factory(m)
    assert not torch.equal(unl["weak"], unl["weak2"])  # two independent draws
    out = m.compute_losses(lab, unl)
    logits = m.model(torch.cat([lab["weak"], unl["weak"], unl["weak2"]]))
    ll, u1, u2 = logits[:4], logits[4:12], logits[12:]
    ref = F.cross_entropy(ll, lab["y"]) + 3.0 * ((u1.softmax(1) - u2.softmax(1).detach()) ** 2).mean()
    assert torch.allclose(out["loss"], ref, atol=1e-6)


def test_mean_teacher_uses_the_ema_teacher(batch_factory):
    m = _module(MeanTeacher, lambda_u=5.0, rampup_ratio=0.0, ema_decay=0.9)
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # student != teacher
    lab, unl = batch_factory(m)
    out = m.compute_losses(lab, unl)
    logits = m.model(torch.cat([lab["weak"], unl["weak"]]))
    teacher = m.ema_model(unl["weak2"])
    ref = F.cross_entropy(logits[:4], lab["y"]) + 5.0 * ((logits[4:].softmax(1) - teacher.softmax(1)) ** 2).mean()
    assert torch.allclose(out["loss"], ref, atol=1e-6)
    out["loss"].backward()
    assert all(p.grad is None for p in m.ema_model.parameters())


def test_mean_teacher_ema_warmup(monkeypatch):
    m = _module(MeanTeacher, ema_decay=0.99)
    for step, decay in [(1, 0.5), (9, 0.9), (1000, 0.99)]:
        _at_step(monkeypatch, MeanTeacher, step, 2000)
        assert m.ema_decay_now() == pytest.approx(decay)
    m.hparams.ema_warmup = False
    assert m.ema_decay_now() == pytest.approx(0.99)
    _at_step(monkeypatch, MeanTeacher, 1, 2000)
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    m.hparams.ema_warmup = True
    old = [p.clone() for p in m.ema_model.parameters()]
    m.update_ema()  # the base's update with the decay of this step
    for e, o, p in zip(m.ema_model.parameters(), old, m.model.parameters()):
        assert torch.allclose(e, 0.5 * o + 0.5 * p)


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_vat_perturbation_has_norm_eps_and_keeps_bn(space):
    m = _module(VAT, eps=2.5, xi=1e-6, eps_space=space)
    m.train()
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        ref = m.model(x)
    before = _bn_state(m.model)
    r = m.adversarial_perturbation(x, ref)
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((5,), 2.5), atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_state(m.model)))
    assert all(p.grad is None for p in m.model.parameters())
    pix = m._to_pixels(r)
    if space == "pixel":
        assert torch.equal(pix, r)
    else:  # r lives on the standardised input: the pixel perturbation is r * std per channel
        assert torch.allclose(pix, r * m.model.std)


def test_vat_power_iteration_finds_the_top_eigenvector():
    """Linear softmax model: KL(p(x) || p(x + r)) ~ r^T W^T (diag p - p p^T) W r / 2."""
    torch.manual_seed(0)
    m = _module(VAT, eps=1.0, xi=1e-3, power_iterations=30, eps_space="pixel")
    lin = nn.Linear(12, 4).double()
    m.model = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(1, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        logits = m.model(x)
        p = logits.softmax(1)[0]
        h = lin.weight.T @ (torch.diag(p) - torch.outer(p, p)) @ lin.weight
        top = torch.linalg.eigh(h).eigenvectors[:, -1]
    r = m.adversarial_perturbation(x, logits).flatten()
    assert abs(float(torch.dot(r, top))) == pytest.approx(1.0, abs=1e-4)


def test_vat_loss_reference(batch_factory):
    m = _module(VAT, lambda_u=0.7, rampup_ratio=0.0, entmin_weight=0.5, eps=3.0)
    lab, unl = batch_factory(m)
    bn0 = _bn_state(m.model)
    torch.manual_seed(7)
    out = m.compute_losses(lab, unl)
    bn_after = _bn_state(m.model)
    # only the clean [labeled, unlabeled] pass moved the running statistics
    probe = copy.deepcopy(m)
    for b, v in zip([b for n, b in probe.model.named_buffers() if "running" in n or "num_batches" in n], bn0):
        b.copy_(v)
    logits = probe.model(torch.cat([lab["weak"], unl["weak"]]))
    assert all(torch.allclose(a, b) for a, b in zip(_bn_state(probe.model), bn_after))
    # loss: recompute r_adv with the same noise draw
    with probe.frozen_bn_stats(probe.model):
        with torch.no_grad():
            ref = probe.model(unl["weak"])
        torch.manual_seed(7)
        r = probe.adversarial_perturbation(unl["weak"], ref)
        adv = probe.model(unl["weak"] + r * probe.model.std)
    log_p, log_q = ref.log_softmax(1), adv.log_softmax(1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    lu = logits[4:]
    ent = -(lu.softmax(1) * lu.log_softmax(1)).sum(1).mean()
    expected = F.cross_entropy(logits[:4], lab["y"]) + 0.7 * kl + 0.5 * ent
    assert torch.allclose(out["loss"], expected, atol=1e-5)


def test_mixmatch_guess_sharpen_and_mixup_pairing(batch_factory):
    m = _module(MixMatch, temperature=0.5, mixup_alpha=0.75, lambda_u=4.0, rampup_ratio=0.0)
    assert m.unlabeled_views == ("weak", "weak2")
    lab, unl = batch_factory(m)
    bn0 = _bn_state(m.model)
    torch.manual_seed(3)
    mix = m.mix_batch(lab, unl)
    assert all(torch.equal(a, b) for a, b in zip(bn0, _bn_state(m.model)))  # guessing froze BN
    logits = m.model(torch.cat([unl["weak"], unl["weak2"]]))
    mean = (logits[:8].softmax(1) + logits[8:].softmax(1)) / 2
    sharp = mean ** 2 / (mean ** 2).sum(1, keepdim=True)
    assert torch.allclose(mix["q"], sharp, atol=1e-6)
    onehot = F.one_hot(lab["y"], 10).float()
    assert torch.allclose(mix["y_all"], torch.cat([onehot, sharp, sharp]), atol=1e-6)
    lam, perm = mix["lam"], mix["perm"]
    assert 0.5 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(20))
    for i in range(20):
        j = int(perm[i])
        assert torch.allclose(mix["x_mix"][i], lam * mix["x_all"][i] + (1 - lam) * mix["x_all"][j], atol=1e-6)
        assert torch.allclose(mix["y_mix"][i], lam * mix["y_all"][i] + (1 - lam) * mix["y_all"][j], atol=1e-6)
    # full loss: same mix-up draw, one forward over the mixed batch
    torch.manual_seed(3)
    out = m.compute_losses(lab, unl)
    z = m.model(mix["x_mix"])
    sup = -(mix["y_mix"][:4] * z[:4].log_softmax(1)).sum(1).mean()
    unsup = ((z[4:].softmax(1) - mix["y_mix"][4:]) ** 2).mean()
    assert torch.allclose(out["loss"], sup + 4.0 * unsup, atol=1e-5)
    assert out["mixup_lambda"] == pytest.approx(lam)


def test_uda_tsa_masking_and_unlabeled_loss(batch_factory, monkeypatch):
    m = _module(UDA, tsa="linear", temperature=0.4, threshold=0.11, lambda_u=1.5)
    lab, unl = batch_factory(m, b=8)
    beta = m.hparams.threshold = _median_confidence(m, lab["weak"], unl["weak"], unl["strong"], part=1)
    with torch.no_grad():
        logits = m.model(torch.cat([lab["weak"], unl["weak"], unl["strong"]]))
    ll, lw, ls = logits[:8], logits[8:24], logits[24:]
    p_y = ll.softmax(1).gather(1, lab["y"][:, None])[:, 0]
    total = 100_000  # choose the step whose eta = t (1 - 1/K) + 1/K splits the labeled batch
    step = max(0, round(float(p_y.median() - 0.1) / 0.9 * total))
    _at_step(monkeypatch, UDA, step, total)
    eta = step / total * 0.9 + 0.1
    out = m.compute_losses(lab, unl)
    keep = [i for i in range(8) if p_y[i] < eta]
    sup = sum(F.cross_entropy(ll[i][None], lab["y"][i][None]) for i in keep) / max(1, len(keep)) if keep else 0.0
    unsup = []
    for w, s in zip(lw, ls):
        t = (w / 0.4).softmax(0)
        unsup.append((t * (t.log() - s.log_softmax(0))).sum() if w.softmax(0).max() >= beta else torch.tensor(0.0))
    ref = sup + 1.5 * torch.stack(unsup).mean()
    assert torch.allclose(out["loss"], torch.as_tensor(ref), atol=1e-5)
    assert out["tsa_threshold"] == pytest.approx(eta)


# ------------------------------------------------------------------------------------ FlexMatch
def test_flexmatch_learning_effect_hand_computed():
    sel = torch.tensor([-1, -1, -1, 0, 0, 1, 2, 2, 2, 2])  # unused 3; sigma = (2, 1, 4)
    beta = learning_effect(sel, 3, warmup=True)
    assert torch.allclose(beta, torch.tensor([0.5, 0.25, 1.0]))
    assert torch.allclose(class_thresholds(beta, 0.95), 0.95 * torch.tensor([1 / 3, 1 / 7, 1.0]))
    assert torch.allclose(class_thresholds(beta, 0.95, "linear"), 0.95 * beta)
    sel = torch.tensor([-1] * 6 + [0, 1, 1, 2])  # unused 6 dominates in warm-up
    assert torch.allclose(learning_effect(sel, 3, warmup=True), torch.tensor([1 / 6, 2 / 6, 1 / 6]))
    assert torch.allclose(learning_effect(sel, 3, warmup=False), torch.tensor([0.5, 1.0, 0.5]))
    assert learning_effect(torch.full((5,), -1), 3) is None  # every image unused: keep the old beta
    assert learning_effect(torch.full((5,), 2), 3) is None  # every image in one class
    assert learning_effect(torch.full((5,), -1), 3, warmup=False) is None


def test_flexmatch_sync_free_update_equals_the_reference():
    """The training step's form (scatter_add_ counts, torch.where for the kept cases) equals
    learning_effect, and the previous beta where learning_effect keeps it (returns None)."""
    g = torch.Generator().manual_seed(0)
    previous = torch.tensor([0.3, 0.6, 0.9])
    cases = [torch.randint(-1, 3, (n,), generator=g) for n in (1, 5, 40, 200)]
    cases += [torch.full((5,), -1), torch.full((5,), 2), torch.tensor([-1, -1, 0, 0, 1, 2, 2, 2])]
    for sel in cases:
        for warmup in (True, False):
            ref = learning_effect(sel, 3, warmup=warmup)
            got = updated_learning_effect(sel, 3, warmup, previous)
            assert torch.allclose(got, previous if ref is None else ref), (sel, warmup)


def test_flexmatch_masks_with_previous_thresholds_then_updates(batch_factory):
    m = _module(FlexMatch, threshold=0.11, lambda_u=2.0)
    lab, unl = batch_factory(m)
    tau = m.hparams.threshold = _median_confidence(m, lab["weak"], unl["weak"], unl["strong"], part=1)
    with pytest.raises(ConfigError, match="reset_state"):
        m.compute_losses(lab, unl)
    n = 1400
    m.reset_state(n)
    m.selected_label[:300] = torch.arange(300) % 10  # 30 per class, 1,100 unused
    m.selected_label[:30] = 3  # unequal counts: class 3 gets 57, the others 27
    m.classwise_acc.copy_(learning_effect(m.selected_label, 10))
    old_thr = m.thresholds().clone()
    out = m.compute_losses(lab, unl)
    logits = m.model(torch.cat([lab["weak"], unl["weak"], unl["strong"]]))
    ll, lw, ls = logits[:4], logits[4:12], logits[12:]
    conf, pred = lw.softmax(1).max(1)
    mask = conf >= old_thr[pred]
    assert torch.equal(out["u_mask"], mask)
    ce = F.cross_entropy(ls, pred, reduction="none")
    ref = F.cross_entropy(ll, lab["y"]) + 2.0 * (ce * mask).sum() / 8
    assert torch.allclose(out["loss"], ref, atol=1e-5)
    for k in range(10):
        assert out[f"threshold_c{k}"] == pytest.approx(float(old_thr[k]))
    sel = conf >= tau
    assert 0 < int(sel.sum()) < len(sel)
    assert torch.equal(m.selected_label[unl["idx"][sel]], pred[sel])
    assert torch.allclose(m.classwise_acc, learning_effect(m.selected_label, 10))


def test_flexmatch_state_survives_a_checkpoint():
    m = _module(FlexMatch)
    m.reset_state(12)
    m.selected_label[:5] = torch.tensor([0, 1, 1, 2, 9])
    m.classwise_acc.copy_(learning_effect(m.selected_label, 10))
    sd = m.state_dict()
    fresh = _module(FlexMatch)
    fresh.on_load_checkpoint({"state_dict": sd})
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.selected_label, m.selected_label)
    assert torch.equal(fresh.thresholds(), m.thresholds())


# ------------------------------------------------------------------------------- self-training
def test_crop_scale_vflip():
    x = torch.rand(6, 3, 8, 8)
    flip_only = CropScaleVFlip(scale=1.0, ratio=(1.0, 1.0), flip_prob=1.0)
    assert torch.allclose(flip_only(x), x.flip(2), atol=1e-5)
    t = CropScaleVFlip(scale=0.5, flip_prob=0.5)
    g = torch.Generator().manual_seed(0)
    theta = t.theta(1000, torch.device("cpu"), g)
    sx, sy, cx, cy = theta[:, 0, 0], theta[:, 1, 1].abs(), theta[:, 0, 2], theta[:, 1, 2]
    assert torch.allclose(sx * sy, torch.full_like(sx, 0.5), atol=1e-5)  # half the area
    assert bool(((cx.abs() + sx) <= 1 + 1e-6).all() and ((cy.abs() + sy) <= 1 + 1e-6).all())
    assert 0.4 < float((theta[:, 1, 1] < 0).float().mean()) < 0.6  # vertical flips
    const = torch.full((4, 3, 8, 8), 0.3)
    assert torch.allclose(t(const), const, atol=1e-6)
    out = t(x.repeat(4, 1, 1, 1))
    assert not torch.allclose(out[:6], out[6:12])  # per-sample draws


def test_self_training_selection_is_per_class_top_k(digits_split):
    st = SelfTraining(digits_split, SelfTrainingConfig(rounds=2, fraction=0.25))
    conf = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.95, 0.2, 0.3, 0.4] * 2)
    st.num_classes = 2
    pred = (torch.arange(20) >= 10).long()  # class 0: first 10, class 1: last 10
    sel = st.select(conf, pred, 1)  # floor(0.25 * 1 * 20 / 2) = 2 per class
    assert sel.tolist() == [0, 6, 10, 16]
    sel = st.select(conf, pred, 2)  # floor(0.5 * 20 / 2) = 5 per class
    assert sorted(sel.tolist()) == [0, 2, 3, 4, 6, 10, 12, 13, 14, 16]
    assert len(st.select(conf, pred, 4)) == 20  # k n >= 1: the whole pool


def test_self_training_driver_runs(digits_split, add_square):
    mask = torch.zeros(len(digits_split.unlabeled), dtype=torch.bool)
    mask[:40] = True
    split = PoisonedSplit(**vars(digits_split), trigger=add_square, target=1, unlabeled_poison_mask=mask)
    cfg = SelfTrainingConfig(rounds=2, fraction=0.3, pretrain_steps=3, round_steps=2, final_steps=2, batch_size=16,
                             module={"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 4}},
                             accelerator="cpu", augment="both", supervised_loss=False)
    res = self_train(split, cfg)
    assert isinstance(res.model, nn.Module) and hasattr(res.model, "head")
    assert [r["round"] for r in res.rounds] == [1, 2]
    for r in res.rounds:  # at most floor(k n |D_UL| / C) per predicted class (a 3-step teacher predicts few classes)
        cap = int(0.3 * r["round"] * r["pool_size"] / 10)
        assert max(r["selected_per_class"]) <= cap and r["selected"] <= r["pool_size"]
    assert res.rounds[0]["pool_size"] == len(split.labeled) + len(split.unlabeled)
    assert "poisoned_selected" in res.rounds[0] and "asr" in res.final
    assert 0.0 <= res.final["clean_accuracy"] <= 100.0
    with pytest.raises(ConfigError, match="pseudo_label"):
        SelfTrainingConfig(pseudo_label="test").validate()


# ----------------------------------------------------------------------------------- configs / CLI
def _ssl_configs(small: bool) -> list[str]:
    mine = ZOO
    paths = sorted(glob.glob(str(ROOT / "configs" / "ssl" / "*.yaml")))
    return [p for p in paths if Path(p).stem.endswith("_small") == small and any(Path(p).stem.startswith(n) for n in mine)]


def test_every_zoo_config_instantiates():
    paths = _ssl_configs(small=False)
    assert {Path(p).stem for p in paths} >= {*ZOO, "mean_teacher_yan", "vat_yan"}
    for path in paths:
        model = yaml.safe_load(Path(path).read_text())["model"]
        name = model["class_path"].rsplit(".", 1)[1]
        cls = next(c for c in ALGORITHMS.values() if c.__name__ == name)
        m = cls(num_classes=10, in_channels=3, **model["init_args"])
        assert m.hparams.arch == "wrn28_2"


@pytest.mark.parametrize("path", _ssl_configs(small=True), ids=lambda p: Path(p).stem)
def test_small_config_runs_two_steps_with_the_cli(path, tmp_path):
    from lightning_ssl_backdoor.cli import main

    args = ["fit", "-c", str(ROOT / "configs/trainer/cpu_small.yaml"), "-c", str(ROOT / "configs/data/digits.yaml"),
            "-c", path, "--seed_everything", "0", "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "null", "--trainer.logger", "false",
            "--data.image_size", "8", "--data.batch_size", "8", "--data.mu", "2", "--model.init_args.weak_pad", "1",
            "--model.init_args.model_kwargs", "{width: 4}"]
    assert main(args) == 0
