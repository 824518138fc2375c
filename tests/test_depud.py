"""DePuD (Yan et al., TIFS 2021, Sec. V): detector, Grad-CAM, purification, defense, figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.data import ImageSet, PoisonedSplit
from lightning_ssl_backdoor.defenses.depud import (
    DePuD,
    PoisonDetector,
    PurificationMixin,
    compute_masks,
    detector_scores,
    grad_cam,
    gradcam_overlays,
    load_masks,
    mixup,
    normalize_maps,
    poison_groups,
    purified,
    purified_class_path,
    purify,
    save_masks,
    score_histograms,
    soft_cross_entropy,
    target_layer,
)
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models import build_model
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig
from lightning_ssl_backdoor.defenses import DefenseContext, build_defense
from lightning_ssl_backdoor.pipeline.defense_stage import defense_context
from lightning_ssl_backdoor.ssl import FixMatch, MixMatch, Supervised

torch.set_num_threads(1)


def _tiny(num_classes: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model("tiny_cnn", num_classes=num_classes, in_channels=1, width=4)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode differs from train mode
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _patch(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[..., -3:-1, -3:-1] = 1.0
    return x


def _split(n_lab: int = 20, n_unl: int = 60, n_poison: int = 6, size: int = 8, seed: int = 0) -> PoisonedSplit:
    g = torch.Generator().manual_seed(seed)

    def imgs(n: int) -> torch.Tensor:
        return (torch.rand(n, 1, size, size, generator=g) * 0.6).mul(255).round().to(torch.uint8)

    lab_x = imgs(n_lab)
    unl_x = imgs(n_unl)
    unl_x[:n_poison] = _patch(unl_x[:n_poison].float() / 255).mul(255).round().to(torch.uint8)
    lab_y = torch.arange(n_lab) % 2
    classes = ["a", "b"]
    labeled = ImageSet(images=lab_x, labels=lab_y, classes=classes)
    unlabeled = ImageSet(images=unl_x, labels=torch.full((n_unl,), -1), classes=classes,
                         true_labels=torch.arange(n_unl) % 2)
    test = ImageSet(images=imgs(16), labels=torch.arange(16) % 2, classes=classes)
    mask = torch.zeros(n_unl, dtype=torch.bool)
    mask[:n_poison] = True
    # half the poisons are "weak" (kind 0): DeNeB's untriggered poisons
    arrays = {"kind": torch.tensor([0, 1] * (n_poison // 2), dtype=torch.int8), "position": torch.arange(n_poison)}
    return PoisonedSplit(labeled=labeled, unlabeled=unlabeled, test=test, labeled_indices=torch.arange(n_lab),
                         unlabeled_indices=torch.arange(n_unl), trigger=_PatchTrigger(), target=1,
                         unlabeled_poison_mask=mask, attack={"name": "toy", "pool": "unlabeled", "arrays": arrays})


class _PatchTrigger(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _patch(x)


# ------------------------------------------------------------------------------ Grad-CAM
def _brute_force_cam(model, x: torch.Tensor, c: int) -> torch.Tensor:
    """Per-image loop: the backbone run by hand up to last_conv, autograd on that activation."""
    bb = model.backbone
    out = []
    for i in range(len(x)):
        a = bb.block2(bb.block1(model.normalize(x[i : i + 1])))
        a = bb.block3(a).detach().requires_grad_(True)
        y = model.head(bb.pool(a))[0, c]
        (g,) = torch.autograd.grad(y, a)
        w = g.mean((2, 3), keepdim=True)
        cam = F.relu((w * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        lo, hi = cam.min(), cam.max()
        out.append((cam - lo) / (hi - lo) if hi - lo > 1e-12 else torch.zeros_like(cam))
    return torch.stack(out)


def test_grad_cam_matches_per_image_autograd_and_analytic_weights():
    model = _tiny(num_classes=3)
    x = torch.rand(5, 1, 12, 12)
    for c in (0, 2):
        cams, probs = grad_cam(model, x, target_class=c)
        assert cams.shape == (5, 12, 12) and probs.shape == (5, 3)
        assert torch.allclose(cams, _brute_force_cam(model, x, c), atol=1e-5)
        assert torch.allclose(probs, model(x).softmax(1), atol=1e-6)
        assert cams.min() >= 0 and cams.max() <= 1
        # analytic: global average pooling then a linear head => alpha_k = W[c, k] / (h w)
        a = model.backbone.block3(model.backbone.block2(model.backbone.block1(model.normalize(x))))
        cam = F.relu(torch.einsum("k,bkhw->bhw", model.head.weight[c], a)).unsqueeze(1)
        cam = F.interpolate(cam, size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
        assert torch.allclose(cams, normalize_maps(cam), atol=1e-5)
    # the model's mode is restored and frozen parameters are fine
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    cams2, _ = grad_cam(model, x, target_class=2)
    assert model.training
    model.eval()
    assert torch.allclose(cams2, _brute_force_cam(model, x, 2), atol=1e-5)


def test_compute_masks_chunks_and_errors():
    model = _tiny()
    imgs = (torch.rand(7, 1, 8, 8) * 255).to(torch.uint8)
    masks, scores = compute_masks(model, imgs, target_class=1, chunk_size=3)
    assert masks.dtype == torch.uint8 and masks.shape == (7, 8, 8) and scores.shape == (7,)
    ref, probs = grad_cam(model, imgs.float() / 255, 1)
    assert (masks.int() - ref.mul(255).round().int()).abs().max() <= 1
    assert torch.allclose(scores, probs[:, 1], atol=1e-6)
    assert torch.allclose(scores, detector_scores(model, imgs, batch_size=2), atol=1e-6)
    with pytest.raises(ConfigError, match="chunk_size"):
        compute_masks(model, imgs, chunk_size=0)
    with pytest.raises(ConfigError, match="target_class"):
        grad_cam(model, imgs.float() / 255, target_class=5)
    with pytest.raises(ConfigError, match="last_conv"):
        target_layer(torch.nn.Linear(2, 2))
    z = normalize_maps(torch.zeros(2, 3, 3))
    assert torch.equal(z, torch.zeros(2, 3, 3))


# ------------------------------------------------------------------------------ detector
def test_mixup_soft_ce_and_weight_penalty():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 4, 4)
    t = F.one_hot(torch.tensor([0, 0, 0, 1, 1, 1]), 2).float()
    xm, tm = mixup(x, t, 4.0)
    assert torch.allclose(tm.sum(1), torch.ones(6))
    lam = tm[:, 1]  # mixed targets are convex combinations, and inputs use the same weights
    assert ((tm >= 0) & (tm <= 1)).all() and not torch.equal(xm, x)
    x0, t0 = mixup(x, t, 0.0)
    assert x0 is x and t0 is t and lam.numel() == 6
    logits = torch.randn(6, 2)
    assert torch.allclose(soft_cross_entropy(logits, t), F.cross_entropy(logits, t.argmax(1)))
    det = PoisonDetector(arch="tiny_cnn", in_channels=1, model_kwargs={"width": 4}, l1=0.1, l2=0.01)
    ps = list(det.model.parameters())
    ref = 0.1 * sum(p.abs().sum() for p in ps) + 0.01 * sum((p ** 2).sum() for p in ps)
    assert torch.allclose(det.weight_penalty(), ref)
    assert det.hparams.num_classes == 2 and det.model.num_classes == 2 and det.ema_model is None
    for bad, match in (({"alpha_mix": -1}, "alpha_mix"), ({"l1": -1}, "l1"), ({"view": "blur"}, "view")):
        with pytest.raises(ConfigError, match=match):
            PoisonDetector(arch="tiny_cnn", in_channels=1, **bad)


def test_detector_loss_is_balanced_and_learns_the_trigger():
    torch.manual_seed(0)
    det = PoisonDetector(arch="tiny_cnn", in_channels=1, model_kwargs={"width": 8}, alpha_mix=4.0, view="raw",
                         lr=0.05, num_classes=10)
    opt = torch.optim.SGD(det.model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(80):
        lab = torch.rand(16, 1, 8, 8, generator=g) * 0.6
        unl = torch.rand(40, 1, 8, 8, generator=g) * 0.6
        unl[:8] = _patch(unl[:8])
        out = det.compute_losses({"x": lab}, {"x": unl})  # surplus unlabeled images are cut
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert set(out) >= {"loss", "mix_loss", "penalty"}
    clean = torch.rand(50, 1, 8, 8, generator=g) * 0.6
    s_clean = detector_scores(det.model, clean)
    s_trig = detector_scores(det.model, _patch(clean))
    from lightning_ssl_backdoor.metrics import auroc

    assert auroc(torch.cat([s_clean, s_trig]), torch.arange(100) >= 50) > 0.9
    with pytest.raises(ConfigError, match="unlabeled"):
        det.compute_losses({"x": clean}, None)


# --------------------------------------------------------------------------- purification
def test_purify_equations_24_to_26():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 5, 5)
    m = torch.rand(3, 5, 5)
    mean = torch.tensor([0.3, 0.7])
    noise = torch.randn_like(x)
    sigma = 100 / 255
    M = m[:, None]
    P = mean.view(1, 2, 1, 1)
    assert torch.allclose(purify(x, m, "oc", mean), M * P + (1 - M) * x)
    assert torch.allclose(purify(x, m, "dp", mean, sigma, noise), (x + sigma * noise * M).clamp(0, 1))
    assert torch.allclose(purify(x, m, "ocdp", mean, sigma, noise), ((1 - M) * x + M * P + sigma * noise * M).clamp(0, 1))
    # a zero mask leaves the image alone; a one mask occludes it completely (OC)
    assert torch.equal(purify(x, torch.zeros(3, 5, 5), "ocdp", mean, sigma), x)
    assert torch.allclose(purify(x, torch.ones(3, 1, 5, 5), "oc", mean), P.expand_as(x))
    out = purify(x, m, "dp", mean, 5.0)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ConfigError, match="mode"):
        purify(x, m, "blur", mean)
    with pytest.raises(ConfigError, match="sigma"):
        purify(x, m, "dp", mean, -1)
    with pytest.raises(ConfigError, match="do not match"):
        purify(x, m[:2], "oc", mean)


def test_purified_subclass_factory_and_batch_path(tmp_path):
    cls = purified(FixMatch)
    assert purified(FixMatch) is cls and purified(cls) is cls
    assert issubclass(cls, FixMatch) and issubclass(cls, PurificationMixin)
    from lightning_ssl_backdoor.ssl import resolve_algorithm

    assert resolve_algorithm(purified_class_path(FixMatch)) is cls
    assert resolve_algorithm("lightning_ssl_backdoor.defenses.depud.purify.PurifiedMixMatch") is purified(MixMatch)
    with pytest.raises(ConfigError, match="SSLModule"):
        purified(int)
    with pytest.raises(ConfigError, match="purify_mode"):
        cls(arch="tiny_cnn", in_channels=1, purify_mode="x")

    unl = (torch.rand(6, 1, 8, 8) * 255).to(torch.uint8)
    masks = torch.zeros(6, 8, 8, dtype=torch.uint8)
    masks[1:3, :4, :4] = 255  # images 1 and 2: top-left quadrant fully masked
    path = save_masks(tmp_path / "m.npz", masks, torch.tensor([0.5]), unl, scores=torch.rand(6))
    arrays, meta = load_masks(path)
    assert torch.equal(arrays["masks"], masks) and meta["format"] == "depud-masks-v1"
    mod = cls(arch="tiny_cnn", in_channels=1, model_kwargs={"width": 4}, purify_mode="oc", masks_path=str(path),
              weak_pad=0, strong_n=1)
    assert mod.hparams.masks_path == str(path) and mod.hparams.threshold == 0.95
    arrays, _ = load_masks(path)
    mod.set_purification(arrays["masks"], arrays["mean"])
    idx = torch.tensor([2, 0, 1, 2])
    batch = {"labeled": {"x": unl[:2], "y": torch.tensor([0, 1]), "idx": torch.tensor([0, 1])},
             "unlabeled": {"x": unl[idx], "idx": idx}}
    out = mod.on_after_batch_transfer(batch, 0)
    xu = out["unlabeled"]["x"]
    expected = purify(unl[idx].float() / 255, masks[idx].float() / 255, "oc", torch.tensor([0.5]))
    assert torch.allclose(xu, expected, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(xu[1], unl[0].float() / 255)  # unmasked image unchanged
    assert torch.allclose(xu[0, :, :4, :4], torch.full((1, 4, 4), 128 / 255))
    assert set(out["unlabeled"]) >= {"weak", "strong", "idx"}
    assert torch.equal(batch["unlabeled"]["x"], unl[idx])  # the loader's batch is not modified
    # evaluation batches pass through untouched
    ev = mod.on_after_batch_transfer({"x": unl, "y": torch.zeros(6, dtype=torch.long)}, 0)
    assert torch.allclose(ev["x"], unl.float() / 255)
    with pytest.raises(ConfigError, match="uint8"):
        save_masks(tmp_path / "bad.npz", masks.float(), torch.tensor([0.5]), unl)
    with pytest.raises(ConfigError, match="do not exist"):
        load_masks(tmp_path / "missing.npz")


def _ctx(tmp_path: Path, split, algorithm: str = "fixmatch", steps: int = 2) -> DefenseContext:
    return defense_context(
        split=split, seed=0, algorithm=Spec(algorithm, {"threshold": 0.5} if algorithm == "fixmatch" else {}),
        model_args={"arch": "tiny_cnn", "model_kwargs": {"width": 4}, "weak_pad": 1, "ema_decay": 0.9},
        data=DataConfig(batch_size=4, mu=2, eval_batch_size=64), progress=False,
        trainer=TrainerConfig(max_steps=steps, val_check_interval=steps, checkpoint_every_n_steps=1, accelerator="cpu"),
        stage_dir=tmp_path / "stage",
    )


def test_depud_defense_end_to_end_cached(tmp_path):
    split = _split()
    ctx = _ctx(tmp_path, split)
    d = build_defense(Spec("depud", {"mode": "ocdp", "detector": {"steps": 3, "batch_size": 8}, "num_examples": 3}))
    assert isinstance(d, DePuD)
    res = d.run(ctx)
    info = res["defense_info"]
    assert 0 <= res["test"]["acc"] <= 1 and "asr" in res["test"] and res["steps"] == 2
    assert info["num_poison"] == 6 and info["num_samples"] == 60 and 0 <= info["auroc"] <= 1
    assert info["precision"] is not None and info["recall"] is not None and info["auroc_triggered"] is not None
    assert info["detector"]["steps"] == 3 and "score_triggered" in info["detector"]["heldout_test"]
    assert info["purified_algorithm"].endswith("PurifiedFixMatch") and info["mode"] == "ocdp"
    for f in info["figures"].values():
        assert Path(f).is_file() and Path(f).stat().st_size > 0
    stage = d.detector_context(ctx).stage_dir  # shared by rows that differ only in the purification
    assert stage.parent == ctx.stage_dir.parent and stage.name.startswith("depud-")
    assert stage == DePuD(mode="oc", sigma=0.1, detector={"steps": 3, "batch_size": 8}).detector_context(ctx).stage_dir
    assert stage != DePuD(detector={"steps": 4, "batch_size": 8}).detector_context(ctx).stage_dir
    assert stage != DePuD(cut=0.7, detector={"steps": 3, "batch_size": 8}).detector_context(ctx).stage_dir
    assert (stage / "detector" / "model.pt").is_file() and (stage / "masks.npz").is_file()
    assert (ctx.stage_dir / "figures" / "depud_scores.png").is_file()
    arrays, meta = load_masks(stage / "masks.npz")
    assert arrays["masks"].shape == (60, 8, 8) and arrays["scores"].shape == (60,)
    assert torch.allclose(arrays["mean"], split.labeled.images.float().div(255).mean((0, 2, 3)))
    hp = torch.load(ctx.stage_dir / "ssl" / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    assert hp["purify_mode"] == "ocdp" and hp["masks_path"].endswith("masks.npz") and hp["threshold"] == 0.5
    # a second run reuses every cached stage and gives the same row
    mtime = (stage / "masks.npz").stat().st_mtime_ns
    res2 = d.run(ctx)
    assert res2["test"] == res["test"] and (stage / "masks.npz").stat().st_mtime_ns == mtime
    # masks made for another unlabeled set are refused at training time
    other = _split(seed=3)
    other_ctx = _ctx(tmp_path, other)
    other_ctx.stage_dir = tmp_path / "other"
    with pytest.raises(ConfigError, match="different unlabeled set"):
        other_ctx.train(other, name="x", algorithm=Spec(purified_class_path(FixMatch),
                                                         {"masks_path": str(stage / "masks.npz")}))


def test_depud_flagged_scope_and_groups(tmp_path):
    split = _split()
    poison, triggered = poison_groups(split)
    assert poison.sum() == 6 and triggered.sum() == 3 and torch.equal(triggered[:6], torch.tensor([False, True] * 3))
    d = DePuD(purify="flagged", cut=1.0, figures=False, detector={"steps": 2, "batch_size": 8}, share_detector=False)
    ctx = _ctx(tmp_path, split, algorithm="supervised", steps=1)
    # purified Supervised never sees unlabeled batches, the pipeline still runs
    res = d.run(ctx)
    assert d.detector_context(ctx) is ctx and (ctx.stage_dir / "detector" / "model.pt").is_file()
    arrays, _ = load_masks(ctx.stage_dir / "masks.npz")
    assert int(arrays["masks"].sum()) == 0  # nothing reaches score 1.0, so nothing is purified
    assert res["defense_info"]["num_flagged"] == 0 and "figures" not in res["defense_info"]
    assert issubclass(purified(Supervised), Supervised)


def test_depud_weighted_scope_scales_each_mask_by_its_score(tmp_path):
    split = _split()
    d = DePuD(purify="weighted", figures=False, detector={"steps": 2, "batch_size": 8}, share_detector=False)
    ctx = _ctx(tmp_path, split, algorithm="supervised", steps=1)
    d.run(ctx)
    arrays, _ = load_masks(ctx.stage_dir / "masks.npz")
    _, model = d.train_detector(ctx)  # cached: the same detector
    full, scores = compute_masks(model, split.unlabeled.images, 1)
    expected = (full.float() * scores[:, None, None]).round().to(torch.uint8)
    assert torch.allclose(arrays["scores"].float(), scores.float())
    assert (arrays["masks"].int() - expected.int()).abs().max() <= 1  # rounding of the stored score
    assert int(arrays["masks"].sum()) < int(full.int().sum())


@pytest.mark.parametrize(
    "args, match",
    [
        ({"mode": "blur"}, "mode"),
        ({"sigma": -0.1}, "sigma"),
        ({"cut": 1.5}, "cut"),
        ({"purify": "some"}, "purify"),
        ({"mask_chunk": 0}, "mask_chunk"),
        ({"num_examples": 0}, "num_examples"),
        ({"detector": {"bogus": 1}}, "unknown"),
        ({"detector": {"steps": 0}}, "steps"),
    ],
)
def test_depud_config_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        DePuD(**args)


def test_figures(tmp_path):
    p = score_histograms({"labeled": torch.rand(20), "clean": torch.rand(50), "poison": torch.ones(5), "none": torch.zeros(0)},
                         tmp_path / "h.png")
    assert p.is_file() and p.stat().st_size > 1000
    x = torch.rand(3, 1, 8, 8)
    q = gradcam_overlays(x, torch.rand(3, 8, 8), x[:2], torch.rand(2, 8, 8), tmp_path / "g.png",
                         torch.rand(3), torch.rand(2))
    assert q.is_file() and q.stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    with pytest.raises(ConfigError, match="non-empty"):
        score_histograms({"a": torch.zeros(0)}, tmp_path / "e.png")
    with pytest.raises(ConfigError, match="differ"):
        gradcam_overlays(x, torch.rand(2, 8, 8), x, torch.rand(3, 8, 8), tmp_path / "f.png")


def test_experiment_config_rows():
    import yaml

    from lightning_ssl_backdoor.pipeline.experiment import config_from_dict

    root = Path(__file__).resolve().parents[1]
    cfg = config_from_dict(yaml.safe_load((root / "configs" / "experiments" / "depud_digits.yaml").read_text()))
    assert [a.name for a in cfg.algorithms] == ["fixmatch"] and cfg.attacks[0].name == "deneb"
    assert cfg.defenses[0] is None and [d.init_args["mode"] for d in cfg.defenses[1:]] == ["oc", "dp", "ocdp"]
    for spec in cfg.defenses[1:]:
        build_defense(spec)
    defaults = yaml.safe_load((root / "configs" / "defense" / "depud.yaml").read_text())
    assert isinstance(build_defense(Spec(defaults["name"], defaults["init_args"])), DePuD)
    assert json.dumps(defaults)
