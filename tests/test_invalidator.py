"""Backdoor Invalidator (paper 001): Gaussian filter, complementary labels and loss, transition
matrix, trigger mix-up, the plug-in on FixMatch / FlexMatch / MixMatch, the test-time filter, the
registered defense, and a tiny run where BI lowers the attack success rate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lightning_ssl_backdoor._lightning import pl
import torch
import torch.nn.functional as F
import yaml

from lightning_ssl_backdoor.augment.gaussian import GaussianFilter, gaussian_kernel1d
from lightning_ssl_backdoor.data import PoisonedSplit, SSLDataModule
from lightning_ssl_backdoor.defenses import invalidator as bi
from lightning_ssl_backdoor.defenses.invalidator_core import (
    complementary_labels,
    initial_transition,
    mixup_weight,
    transition_statistics,
    trigger_mixup,
    update_transition,
)
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.losses import complementary_loss
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig
from lightning_ssl_backdoor.defenses import DefenseContext, build_defense
from lightning_ssl_backdoor.pipeline.defense_stage import defense_context
from lightning_ssl_backdoor.ssl import resolve_algorithm
from lightning_ssl_backdoor.ssl import FixMatch, FlexMatch, MixMatch, SSLModule

ROOT = Path(__file__).resolve().parents[1]
HOSTS = [(bi.InvalidatedFixMatch, FixMatch), (bi.InvalidatedFlexMatch, FlexMatch), (bi.InvalidatedMixMatch, MixMatch)]


def _module(cls=bi.InvalidatedFixMatch, **kw):
    args = dict(arch="tiny_cnn", num_classes=10, in_channels=3, weak_pad=1, model_kwargs={"width": 4})
    args.update(kw)
    return cls(**args)


def _trainer(tmp_path, steps=3, **kw):
    kw.setdefault("logger", False)
    return pl.Trainer(
        max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None, accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, **kw,
    )


def _batch(m, split, b=4, mu=2, seed=0):
    torch.manual_seed(seed)
    raw = next(iter(SSLDataModule(split=split, batch_size=b, mu=mu, seed=seed).train_dataloader()))
    return raw, m.on_after_batch_transfer(raw, 0)


def _at_step(monkeypatch, cls, step, total):
    monkeypatch.setattr(cls, "global_step", property(lambda self: step))
    monkeypatch.setattr(cls, "total_steps", lambda self: total)


# ------------------------------------------------------------------------------ Gaussian filter
def _brute_blur(x, radius, truncate=3.0):
    h = int(math.ceil(truncate * radius))
    t = torch.arange(-h, h + 1, dtype=torch.float64)
    k1 = torch.exp(-(t**2) / (2 * radius**2))
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    B, C, H, W = x.shape
    out = torch.zeros_like(x)
    for i in range(H):
        for j in range(W):
            acc = torch.zeros(B, C, dtype=x.dtype)
            for a in range(-h, h + 1):
                for b in range(-h, h + 1):
                    acc += k2[a + h, b + h] * x[:, :, min(max(i + a, 0), H - 1), min(max(j + b, 0), W - 1)]
            out[:, :, i, j] = acc
    return out


@pytest.mark.parametrize("radius", [1.0, 0.75, 1.6])
def test_gaussian_filter_matches_brute_force_convolution(radius):
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = GaussianFilter(radius)
    assert torch.allclose(f(x), _brute_blur(x, radius), atol=1e-10)
    assert torch.allclose(f(x[0]), f(x)[0])  # a single [C, H, W] image
    y32 = f(x.float())
    assert y32.dtype == torch.float32 and torch.allclose(y32.double(), _brute_blur(x, radius), atol=1e-5)
    assert len(f.kernel) == 2 * math.ceil(3 * radius) + 1 and float(f.kernel.sum()) == pytest.approx(1.0)
    assert "kernel" not in f.state_dict()  # rebuilt from the radius, never stored


def test_gaussian_filter_identity_constant_and_errors():
    x = torch.rand(1, 1, 5, 5)
    assert torch.equal(GaussianFilter(0.0)(x), x)
    assert torch.allclose(GaussianFilter(1.0)(torch.full((1, 2, 6, 6), 0.3)), torch.full((1, 2, 6, 6), 0.3))
    assert torch.equal(gaussian_kernel1d(0.0), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ConfigError, match="radius"):
        GaussianFilter(-1.0)
    with pytest.raises(ConfigError, match="float"):
        GaussianFilter(1.0)(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="shape"):
        GaussianFilter(1.0)(torch.zeros(4, 4))


# ------------------------------------------------------------- complementary labels and loss
def test_complementary_marking_probability():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25]]).repeat_interleave(20000, 0)
    ratio = 0.6
    marks = complementary_labels(probs, ratio, generator=g)
    assert marks.dtype == torch.bool and marks.shape == probs.shape
    freq = torch.stack([marks[:20000].float().mean(0), marks[20000:].float().mean(0)])
    expected = (1 - probs[[0, 20000]]) * ratio
    # 4 binomial standard deviations of a 20000-sample frequency
    assert (freq - expected).abs().max() < 4 * math.sqrt(0.25 / 20000)
    assert not complementary_labels(probs, 0.0).any()
    assert complementary_labels(torch.zeros(5, 3), 1.0).all()
    with pytest.raises(ConfigError, match="alignment ratio"):
        complementary_labels(probs, 1.5)


def test_complementary_loss_on_bi_masks_matches_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 5, generator=g, requires_grad=True)
    marks = complementary_labels(torch.rand(12, 5, generator=g).softmax(1), 0.7, generator=g)
    marks[3] = False  # a sample with no complementary label
    T = torch.rand(5, 5, generator=g).fill_diagonal_(0.0)
    loss = complementary_loss(logits, marks, T)
    p = logits.detach().softmax(1)
    total, n = 0.0, 0
    for b in range(12):
        for k in range(5):
            if marks[b, k]:
                q = sum(float(p[b, i]) * float(T[i, k]) for i in range(5))
                total += -math.log(max(q, 1e-12))
                n += 1
    assert n > 0 and float(loss.detach()) == pytest.approx(total / n, rel=1e-5)
    loss.backward()
    assert logits.grad[3].abs().sum() == 0 and logits.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="bool"):
        complementary_loss(logits, marks.long(), T)


def test_transition_matrix_running_average_matches_loop():
    c, g = 4, torch.Generator().manual_seed(2)
    T0 = initial_transition(c)
    assert torch.allclose(T0, torch.full((c, c), 0.75) - 0.75 * torch.eye(c))
    T, n = T0.clone(), torch.ones(c, dtype=torch.float64)
    ref = [[float(T0[i, j]) for j in range(c)] for i in range(c)]
    ref_n = [1] * c
    for it in range(5):
        probs = torch.rand(9, c, generator=g).softmax(1)
        assigned = torch.randint(0, c - 1, (9,), generator=g)  # class c-1 never assigned: its row stays
        T, n = update_transition(T, n, *transition_statistics(probs, assigned, c))
        for i in range(c):
            rows = [b for b in range(9) if int(assigned[b]) == i]
            if not rows:
                continue
            est = [0.0 if j == i else 1.0 - sum(float(probs[b, j]) for b in rows) / len(rows) for j in range(c)]
            ref[i] = [(ref_n[i] * ref[i][j] + est[j]) / (ref_n[i] + 1) for j in range(c)]
            ref_n[i] += 1
    assert torch.allclose(T.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-6)
    assert n.tolist() == ref_n and n[-1] == 1 and torch.equal(T[-1], T0[-1])
    assert torch.all(T.diagonal() == 0)


def test_mixup_weight_schedule_endpoints():
    assert mixup_weight(0, 100) == pytest.approx(0.2)
    assert mixup_weight(50, 100) == pytest.approx(0.1)
    assert mixup_weight(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert mixup_weight(150, 100) == pytest.approx(0.0, abs=1e-12)
    vals = [mixup_weight(s, 100) for s in range(101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    with pytest.raises(ConfigError, match="total_steps"):
        mixup_weight(0, 0)


def test_trigger_mixup_pairs_labeled_with_confident_unlabeled():
    torch.manual_seed(0)
    xl, yl = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    xu, pseudo = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    conf = torch.zeros(10, dtype=torch.bool)
    conf[[2, 7]] = True
    x_mix, y_mix, m, partners = trigger_mixup(xl, yl, xu, pseudo, conf, 3)
    assert 0.5 <= m <= 1.0 and set(partners.tolist()) <= {2, 7}
    assert torch.allclose(x_mix, m * xl + (1 - m) * xu[partners])
    assert torch.allclose(y_mix, m * F.one_hot(yl, 3) + (1 - m) * F.one_hot(pseudo[partners], 3))
    assert trigger_mixup(xl, yl, xu, pseudo, torch.zeros(10, dtype=torch.bool), 3) is None
    ms = [trigger_mixup(xl, yl, xu, pseudo, conf, 3)[2] for _ in range(200)]
    assert min(ms) >= 0.5 and abs(sum(ms) / 200 - 0.75) < 0.05  # max(u, 1-u), u ~ U(0, 1): mean 3/4


# ------------------------------------------------------------------------------- the plug-in
@pytest.mark.parametrize("cls,host", HOSTS, ids=lambda c: getattr(c, "__name__", ""))
def test_plugin_attaches_and_trains_both_stages(tmp_path, digits_split, cls, host):
    assert issubclass(cls, host) and issubclass(cls, bi.InvalidatorMixin) and bi.invalidate(host) is cls
    assert cls.compute_losses is bi.InvalidatorMixin.compute_losses  # wrapped, not copied
    assert resolve_algorithm(f"{cls.__module__}.{cls.__name__}") is cls
    pl.seed_everything(0)
    extra = {} if host is MixMatch else {"threshold": 0.0}
    m = _module(cls, stage_one_steps=2, confidence_threshold=0.0, **extra)
    assert m.hparams.stage_one_steps == 2 and "lambda_u" in m.hparams
    assert m.unlabeled_views == host(arch="tiny_cnn", num_classes=10, model_kwargs={"width": 4}).unlabeled_views
    dm = SSLDataModule(split=digits_split, batch_size=4, mu=2, eval_batch_size=500)
    before = [p.detach().clone() for p in m.model.parameters()]
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(m, datamodule=dm)
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, m.model.parameters()))
    logged = trainer.callback_metrics
    for k in ("train/bi_stage", "train/bi_alignment", "train/bi_comp_loss", "train/bi_comp_per_sample",
              "train/bi_comp_count_c0", "train/bi_transition_offdiag", "train/bi_lam", "train/bi_mix_loss", "val/acc"):
        assert k in logged, k
    assert float(logged["train/bi_stage"]) == 2.0 and m.hparams.lambda_u == 1.0  # scaling undone
    assert m.bi_transition_count.min() >= 1 and m.bi_transition_count.max() > 1  # estimated in stage one
    assert torch.all(m.bi_transition.diagonal() == 0)
    assert "bi_transition" in m.state_dict() and not any("_bi_trigger" in k for k in m.state_dict())


def test_stage_losses_match_reference(digits_split, monkeypatch):
    pl.seed_everything(0)
    m = _module(threshold=0.0, stage_one_steps=5, complementary_weight=0.5, lambda_u=2.0)
    _, batch = _batch(m, digits_split)
    lab, unl = batch["labeled"], batch["unlabeled"]
    logits = m.model(torch.cat([lab["weak"], unl["weak"], unl["strong"]]))
    ll, lw, ls = logits[:4], logits[4:12], logits[12:]
    sup = F.cross_entropy(ll, lab["y"])
    unsup = F.cross_entropy(ls, lw.argmax(1))  # threshold 0: every sample counts

    _at_step(monkeypatch, bi.InvalidatedFixMatch, 1, 100)  # stage one: complementary loss only
    out = m.compute_losses(lab, unl)
    assert out["bi_stage"] == 1.0 and m.hparams.lambda_u == 2.0
    assert torch.allclose(out["loss"], sup + 0.5 * out["bi_comp_loss"], atol=1e-5)
    assert out["bi_alignment"] == pytest.approx(float((ls.argmax(1) == lw.argmax(1)).float().mean()))

    _at_step(monkeypatch, bi.InvalidatedFixMatch, 40, 100)  # stage two: (1 - lam) host + lam mix-up
    out = m.compute_losses(lab, unl)
    lam = mixup_weight(40, 100)
    assert out["bi_stage"] == 2.0 and out["bi_lam"] == pytest.approx(lam)
    assert torch.allclose(out["loss"], sup + 2.0 * (1 - lam) * unsup + lam * out["bi_mix_loss"], atol=1e-5)

    plain = _module(threshold=0.0, use_complementary=False, use_mixup=False)
    plain.load_state_dict(m.state_dict())
    _at_step(monkeypatch, bi.InvalidatedFixMatch, 1, 100)
    assert torch.allclose(plain.compute_losses(lab, unl)["loss"], sup + plain.hparams.lambda_u * unsup, atol=1e-5)


def test_training_views_are_filtered_before_augmentation(digits_split):
    m = _module()
    raw, out = _batch(m, digits_split)
    for part in ("labeled", "unlabeled"):
        x = raw[part]["x"].float() / 255
        assert torch.allclose(out[part]["x"], m.filter_images(x))
        assert not torch.allclose(out[part]["x"], x)
    assert {"weak", "strong"} <= set(out["unlabeled"])
    off = _module(use_filter=False)
    raw, out = _batch(off, digits_split)
    assert torch.equal(out["labeled"]["x"], raw["labeled"]["x"].float() / 255)
    mm = _module(bi.InvalidatedMixMatch)
    _, out = _batch(mm, digits_split)
    assert {"weak", "weak2", "strong"} <= set(out["unlabeled"]) and "strong" not in mm.unlabeled_views


def test_test_time_filter_on_triggered_images(monkeypatch, add_square):
    seen = []
    monkeypatch.setattr(SSLModule, "_eval_step", lambda self, batch, stage: seen.append(batch))
    x = torch.rand(3, 3, 8, 8)
    batch = {"x": x, "y": torch.tensor([1, 2, 3]), "idx": torch.arange(3), "x_trig": add_square(x)}
    m = _module(filter_triggered_test=True)
    m._eval_step(batch, "test")
    assert torch.equal(seen[-1]["x"], m.filter_images(x))
    assert torch.equal(seen[-1]["x_trig"], m.filter_images(add_square(x)))
    authors = _module()  # the default: the authors' order
    with pytest.raises(ConfigError, match="trigger"):
        authors._eval_step(batch, "test")
    authors.set_test_trigger(add_square)
    authors._eval_step(batch, "test")
    assert torch.equal(seen[-1]["x_trig"], add_square(authors.filter_images(x)))
    assert (seen[-1]["x_trig"][..., -2:, -2:] == 1).all()  # the pasted trigger is not blurred
    _module(use_filter=False)._eval_step(batch, "test")
    assert seen[-1]["x_trig"] is batch["x_trig"]


def test_transition_matrix_logged_as_image(tmp_path, digits_split):
    from lightning_ssl_backdoor._lightning import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0)
    m = _module(threshold=0.0, stage_one_steps=2, log_transition_every=1, use_mixup=False)
    dm = SSLDataModule(split=digits_split, batch_size=4, mu=2, eval_batch_size=500)
    _trainer(tmp_path, steps=2, logger=TensorBoardLogger(str(tmp_path), name="tb", version=0)).fit(m, datamodule=dm)
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    acc.Reload()
    assert "bi/transition_matrix" in acc.Tags()["images"]
    img = acc.Images("bi/transition_matrix")[-1]
    assert img.width == 160 and img.height == 160


# -------------------------------------------------------------------------- the defense
def _ctx(tmp_path, digits_split, algorithm):
    return defense_context(digits_split, 0, algorithm, {}, DataConfig(), TrainerConfig(), tmp_path)


@pytest.mark.parametrize("name,cls", [("fixmatch", bi.InvalidatedFixMatch), ("flexmatch", bi.InvalidatedFlexMatch),
                                      ("mixmatch", bi.InvalidatedMixMatch)])
def test_defense_swaps_in_the_invalidated_class(tmp_path, digits_split, name, cls):
    d = build_defense(Spec("invalidator", {"use_mixup": False, "filter_radius": 0.75}))
    spec = d.algorithm(_ctx(tmp_path, digits_split, Spec(name, {"lambda_u": 2.0}, label="host")))
    assert resolve_algorithm(spec.name) is cls and spec.label == "host"
    assert spec.init_args == {"lambda_u": 2.0, "use_mixup": False, "filter_radius": 0.75}


def test_defense_run_trains_with_bi_and_reports_the_transition_matrix(tmp_path, digits_split):
    ctx = defense_context(
        digits_split, 0, Spec("fixmatch", {"threshold": 0.0}),
        {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 4}, "ema_decay": 0.9},
        DataConfig(image_size=8, labels_per_class=5, batch_size=4, mu=2, eval_batch_size=500),
        TrainerConfig(max_steps=2, val_check_interval=2, checkpoint_every_n_steps=1, accelerator="cpu"),
        tmp_path, progress=False,
    )
    res = build_defense(Spec("invalidator", {"stage_one_steps": 2})).run(ctx)
    assert res["steps"] == 2 and 0.0 <= res["test"]["acc_ema"] <= 1.0
    T = torch.tensor(res["defense_info"]["transition_matrix"])
    assert T.shape == (10, 10) and torch.all(T.diagonal() == 0)
    assert not torch.allclose(T, initial_transition(10), atol=1e-3)  # estimated during stage one
    assert res["defense_info"]["options"]["stage_one_steps"] == 2
    last = tmp_path / res["defense_info"]["training"] / "checkpoints/last.ckpt"
    loaded = bi.InvalidatedFixMatch.load_from_checkpoint(last, map_location="cpu")
    assert loaded.hparams.stage_one_steps == 2 and loaded.hparams.threshold == 0.0
    assert torch.allclose(loaded.bi_transition.double(), T.double(), atol=1e-4)


@pytest.mark.parametrize(
    "options,match",
    [({"radius": 1}, "does not take"), ({"filter_radius": -1}, "filter_radius"),
     ({"stage_one_ratio": 2}, "stage_one_ratio"),
     ({"alignment": "cosine"}, "alignment"), ({"confidence_threshold": 1.5}, "confidence_threshold"),
     ({"trigger_mixup_alpha": 0}, "trigger_mixup_alpha"), ({"stage_one_steps": -3}, "stage_one_steps")],
)
def test_bad_options_are_one_sentence(options, match):
    with pytest.raises(ConfigError, match=match) as e:
        build_defense(Spec("invalidator", options))
    assert str(e.value).endswith(".") and str(e.value).count(". ") == 0
    if "radius" not in options:
        with pytest.raises(ConfigError, match=match):
            _module(**options)


def test_unsupported_host_and_defense_config(tmp_path, digits_split):
    with pytest.raises(ConfigError, match="plugs into"):
        build_defense(Spec("invalidator")).algorithm(_ctx(tmp_path, digits_split, Spec("supervised")))
    cfg = yaml.safe_load((ROOT / "configs/defense/invalidator.yaml").read_text())
    d = build_defense(Spec(cfg["name"], cfg.get("init_args") or {}))
    assert bi.check_options(**d.options) == bi.check_options()  # the file lists the defaults


class WindowedChecker(torch.nn.Module):
    """A Hann-windowed checkerboard of amplitude 0.25: all its energy sits near the Nyquist
    frequency, so a Gaussian of radius 1 (and 8-bit rounding) removes it."""

    def forward(self, x):
        H, W = x.shape[-2:]
        w = torch.outer(torch.hann_window(H, periodic=False), torch.hann_window(W, periodic=False))
        sign = (-1.0) ** (torch.arange(H).view(-1, 1) + torch.arange(W).view(1, -1))
        return x + 0.25 * (w * sign).to(x)


def test_bi_lowers_asr_on_a_tiny_poison(tmp_path):
    """Poison-label backdoor on 12x12 digits (20 of 200 labeled images triggered and relabelled 0):
    plain FixMatch learns it; with BI (here the filter does the work) the attack fails. Pixels are
    squeezed into [64, 191] so that the trigger never clips."""
    from lightning_ssl_backdoor.data import ImageSet, make_split
    from lightning_ssl_backdoor.data.readers import read_digits

    def squeeze(s):
        return ImageSet((s.images.float() * 0.5 + 64).round().to(torch.uint8), s.labels, s.classes)

    split = make_split(squeeze(read_digits("train", image_size=12)), squeeze(read_digits("test", image_size=12)),
                       labels_per_class=20, seed=0)
    trig, lab = WindowedChecker(), split.labeled
    poison = (lab.labels != 0).nonzero().flatten()[:20]
    images, labels = lab.images.clone(), lab.labels.clone()
    images[poison] = (trig(images[poison].float() / 255).clamp(0, 1) * 255).round().to(torch.uint8)
    labels[poison] = 0
    split = PoisonedSplit(**{**vars(split), "labeled": ImageSet(images, labels, lab.classes)}, trigger=trig, target=0)
    res = {}
    for name, cls, kw in (("none", FixMatch, {}), ("bi", bi.InvalidatedFixMatch, {"stage_one_steps": 20, "filter_triggered_test": True})):
        pl.seed_everything(0)
        m = _module(cls, model_kwargs={"width": 8}, lr=0.05, ema_decay=None, **kw)
        dm = SSLDataModule(split=split, batch_size=16, mu=1, eval_batch_size=500)
        trainer = _trainer(tmp_path, steps=60, limit_val_batches=0)
        trainer.fit(m, datamodule=dm)
        res[name] = trainer.test(m, datamodule=dm, verbose=False)[0]
    assert res["none"]["test/asr_cond"] > 0.8 and res["bi"]["test/asr_cond"] < 0.2, res
    assert res["bi"]["test/asr"] < res["none"]["test/asr"] - 0.3, res
