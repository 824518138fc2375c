"""SSLModule base, Supervised and FixMatch on tiny data."""

from __future__ import annotations

import math

from lightning_ssl_backdoor._lightning import pl
import pytest
import torch

from lightning_ssl_backdoor.data import PoisonedSplit, SSLDataModule
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.metrics import attack_success_rate, clean_accuracy
from lightning_ssl_backdoor.ssl import FixMatch, Supervised


def _trainer(tmp_path, steps=3, **kw):
    return pl.Trainer(
        max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kw,
    )


def _module(cls=FixMatch, **kw):
    args = dict(arch="tiny_cnn", num_classes=10, in_channels=3, weak_pad=1, model_kwargs={"width": 8})
    args.update(kw)
    return cls(**args)


def test_fixmatch_trains_and_logs(tmp_path, digits_split):
    pl.seed_everything(0)
    dm = SSLDataModule(split=digits_split, batch_size=8, mu=2, eval_batch_size=128)
    m = _module()
    trainer = _trainer(tmp_path, steps=4)
    before = [p.detach().clone() for p in m.model.parameters()]
    trainer.fit(m, datamodule=dm)
    assert trainer.global_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, m.model.parameters()))
    logged = trainer.callback_metrics
    for k in ("train/loss", "train/sup_loss", "train/unsup_loss", "train/mask_rate", "val/acc", "val/acc_ema"):
        assert k in logged, k
    assert 0.0 <= float(logged["train/mask_rate"]) <= 1.0


def test_fixmatch_loss_matches_reference(digits_split):
    pl.seed_everything(0)
    m = _module(threshold=0.0)
    batch = next(iter(SSLDataModule(split=digits_split, batch_size=4, mu=2).train_dataloader()))
    batch = m.on_after_batch_transfer(batch, 0)
    lab, unl = batch["labeled"], batch["unlabeled"]
    assert set(unl) >= {"weak", "strong", "idx"} and unl["strong"].shape == unl["x"].shape
    out = m.compute_losses(lab, unl)
    logits = m.model(torch.cat([lab["weak"], unl["weak"], unl["strong"]]))
    ll, lw, ls = logits[:4], logits[4:12], logits[12:]
    sup = torch.nn.functional.cross_entropy(ll, lab["y"])
    pseudo = lw.softmax(1).argmax(1)
    unsup = torch.nn.functional.cross_entropy(ls, pseudo)  # threshold 0: every sample counts
    assert torch.allclose(out["loss"], sup + unsup, atol=1e-5)
    assert torch.equal(out["u_pseudo"], pseudo) and out["u_mask"].all()


def test_config_checks():
    with pytest.raises(ConfigError, match="threshold"):
        _module(threshold=1.5)
    with pytest.raises(ConfigError, match="ema_decay"):
        _module(ema_decay=1.0)
    with pytest.raises(ConfigError, match="schedule"):
        _module(schedule="step")


def test_weight_decay_groups_and_cosine_schedule(tmp_path, digits_split):
    m = _module(lr=0.1, warmup_steps=0)
    trainer = _trainer(tmp_path, steps=16)
    m.trainer = trainer  # noqa: attribute set by Lightning normally
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == pytest.approx(5e-4) and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    n_bn_bias = sum(1 for n, p in m.model.named_parameters() if p.ndim <= 1)
    assert len(no_decay["params"]) == n_bn_bias
    assert opt.param_groups[0]["nesterov"]
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * math.cos(7 * math.pi * k / (16 * 16)) for k in range(16)]
    assert lrs == pytest.approx(expected)


def test_ema_update_formula():
    m = _module(ema_decay=0.9)
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    old = [p.clone() for p in m.ema_model.parameters()]
    m.update_ema()
    for e, o, p in zip(m.ema_model.parameters(), old, m.model.parameters()):
        assert torch.allclose(e, 0.9 * o + 0.1 * p)
    assert all(not p.requires_grad for p in m.ema_model.parameters())


def test_supervised_ignores_unlabeled(digits_split):
    m = _module(Supervised)
    batch = next(iter(SSLDataModule(split=digits_split, batch_size=4, mu=2).train_dataloader()))
    out = m.on_after_batch_transfer(batch, 0)
    assert "unlabeled" not in out
    assert torch.isfinite(m.compute_losses(out["labeled"], None)["loss"])


def test_test_metrics_match_brute_force(tmp_path, digits_split, add_square):
    pl.seed_everything(1)
    target = 3
    split = PoisonedSplit(**vars(digits_split), trigger=add_square, target=target)
    dm = SSLDataModule(split=split, batch_size=8, mu=1, eval_batch_size=100)
    m = _module(Supervised, ema_decay=None)
    trainer = _trainer(tmp_path, steps=5)
    trainer.fit(m, datamodule=dm)
    res = trainer.test(m, datamodule=dm, verbose=False)[0]
    m.eval()
    with torch.no_grad():
        x = split.test.float()
        xt = add_square(x)
        xt = (xt * 255).round() / 255
        clean = m.model(x).argmax(1)
        trig = m.model(xt).argmax(1)
    y = split.test.labels
    assert res["test/acc"] == pytest.approx(clean_accuracy(clean, y), abs=1e-6)
    assert res["test/asr"] == pytest.approx(attack_success_rate(trig, y, target), abs=1e-6)
    assert res["test/asr_cond"] == pytest.approx(attack_success_rate(trig, y, target, clean_preds=clean), abs=1e-6)


def test_backdoor_stats_logged(tmp_path, digits_split, add_square):
    mask = torch.zeros(len(digits_split.unlabeled), dtype=torch.bool)
    mask[::3] = True
    split = PoisonedSplit(**vars(digits_split), trigger=add_square, target=0, unlabeled_poison_mask=mask)
    dm = SSLDataModule(split=split, batch_size=8, mu=4, eval_batch_size=500)
    m = _module(threshold=0.0)
    seen = []
    original = m._log_backdoor_stats

    def spy(out, unlabeled):
        poisoned = split.unlabeled_poison_mask[unlabeled["idx"].cpu()]
        seen.append((int(poisoned.sum()), int(((out["u_pseudo"].cpu() == 0) & poisoned).sum())))
        original(out, unlabeled)

    m._log_backdoor_stats = spy
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(m, datamodule=dm)
    for k in ("backdoor/poisoned_pseudo_target", "backdoor/clean_pseudo_target", "backdoor/poisoned_mask_rate"):
        assert k in trainer.callback_metrics
    assert float(trainer.callback_metrics["backdoor/poisoned_mask_rate"]) == 1.0  # threshold 0: all pass
    n, hits = map(sum, zip(*seen))
    assert float(trainer.callback_metrics["backdoor/poisoned_pseudo_target"]) == pytest.approx(hits / n)


def test_targeted_success_metric(tmp_path, digits_split):
    pl.seed_everything(2)
    split = PoisonedSplit(**vars(digits_split), target=3, attack={"info": {"target_image": 7}})
    dm = SSLDataModule(split=split, batch_size=8, mu=1, eval_batch_size=64)
    m = _module(Supervised, ema_decay=None)
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(m, datamodule=dm)
    res = trainer.test(m, datamodule=dm, verbose=False)[0]
    with torch.no_grad():
        pred = m.model(split.test.float()[7:8]).argmax(1).item()
    assert res["test/targeted"] == float(pred == 3)
    assert "test/asr" not in res  # no trigger: no ASR
