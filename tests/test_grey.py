"""Grey stays grey (issue 21): digits load as one channel, and 1-channel uint8 images go through
every trigger, every attack's ``poison()`` and every defense's core without ever becoming three
identical channels."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning_ssl_backdoor._lightning import pl
import torch

from lightning_ssl_backdoor.attacks import ATTACKS, build_attack
from lightning_ssl_backdoor.data import SSLDataModule, make_split
from lightning_ssl_backdoor.data.imageset import ImageSet, quantize
from lightning_ssl_backdoor.data.readers import load_dataset, read_digits
from lightning_ssl_backdoor.models import build_model
from lightning_ssl_backdoor.triggers import (
    TRIGGER_FACTORIES,
    FrequencyTrigger,
    MosaicTrigger,
    NoiseTrigger,
    PatchTrigger,
    badnets_patch,
    build_trigger,
    dct2,
    deneb_patch,
)

ROOT = Path(__file__).resolve().parents[1]
TARGET = 3
LUMA = torch.tensor([0.299, 0.587, 0.114])


def _grey_uint8(n: int = 4, size: int = 16, seed: int = 0, lo: int = 60, hi: int = 190) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n, 1, size, size), generator=g, dtype=torch.uint8)


def _tiny_model(num_classes: int = 10):
    torch.manual_seed(0)
    return build_model("tiny_cnn", num_classes=num_classes, in_channels=1, width=4)


@pytest.fixture(scope="module")
def grey_split():
    """Digits at 16 px in their default (grey) form: 4 labels per class, 150 unlabeled."""
    train, test = read_digits("train", image_size=16), read_digits("test", image_size=16)
    return make_split(train, test, labels_per_class=4, seed=0, num_unlabeled=150)


# ---------------------------------------------------------------------------------------- data
def test_digits_are_one_channel_everywhere_by_default(tmp_path):
    assert read_digits("test", image_size=8).images.shape[1] == 1
    assert load_dataset("digits", "test", image_size=8).images.shape[1] == 1
    dm = SSLDataModule(dataset="digits", image_size=8, labels_per_class=2)
    assert dm.in_channels == 1 and dm.split.unlabeled.images.shape[1] == 1
    # the experiment runner's data config and clean split
    from lightning_ssl_backdoor.pipeline.config import ExperimentConfig
    from lightning_ssl_backdoor.pipeline.experiment import load_clean_split, split_key

    cfg = ExperimentConfig()
    assert cfg.data.channels is None
    assert load_clean_split(cfg, 0).labeled.images.shape[1] == 1
    rgb = ExperimentConfig()
    rgb.data.channels = 3  # still possible on request, and cached apart from the grey split
    assert load_clean_split(rgb, 0).labeled.images.shape[1] == 3 and split_key(rgb, 0) != split_key(cfg, 0)
    # the poison CLI's data section
    from lightning_ssl_backdoor.attacks.cli import DataConfig, _load_split

    assert _load_split(DataConfig(image_size=8, labels_per_class=2)).test.images.shape[1] == 1
    # LightningCLI `fit -c configs/data/digits.yaml`: the model's input channels follow the data
    from lightning_ssl_backdoor.cli import make_cli

    cli = make_cli(["-c", str(ROOT / "configs/data/digits.yaml"), "-c", str(ROOT / "configs/ssl/fixmatch_small.yaml"),
                    "--data.image_size", "8", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.hparams.in_channels == 1
    assert cli.model.model.backbone.block1[0].weight.shape[1] == 1
    cli3 = make_cli(["-c", str(ROOT / "configs/data/digits.yaml"), "-c", str(ROOT / "configs/ssl/fixmatch_small.yaml"),
                     "--data.image_size", "8", "--data.channels", "3", "--trainer.default_root_dir", str(tmp_path)],
                    run=False)
    assert cli3.model.hparams.in_channels == 3


def test_model_normalisation_has_one_value_per_grey_channel():
    model = _tiny_model()
    assert model.mean.numel() == 1 and model.std.numel() == 1
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 10)


# ------------------------------------------------------------------------------------ triggers
@pytest.mark.parametrize("name", sorted(TRIGGER_FACTORIES))
def test_every_trigger_keeps_grey_images_grey(name):
    t = build_trigger({"name": name}, (1, 16, 16))
    raw = _grey_uint8()
    x = raw.float() / 255
    y = t(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    q = quantize(y)
    assert q.shape == raw.shape and q.dtype == torch.uint8
    changed = (q != raw)[:, 0]
    assert bool(changed.any()), f"{name} changed nothing"
    if isinstance(t, PatchTrigger):  # exactly the patch, pasted as stored (on the uint8 grid)
        assert not bool(changed[:, ~t.mask((16, 16))].any())
        assert t.pattern.shape[0] == 1 and torch.equal(t.pattern * 255, (t.pattern * 255).round())
        h, w = t.pattern.shape[1:]
        for corner in t.corners:
            top, left = t._origin(corner, 16, 16)
            assert torch.equal(y[:, 0, top : top + h, left : left + w], t.pattern[0].expand(len(x), -1, -1))
    elif isinstance(t, MosaicTrigger):
        dots = t.mask(16, 16)
        assert not bool(changed[:, ~dots].any()) and bool(changed[:, dots].all())
    elif isinstance(t, NoiseTrigger):
        assert float((y - x).abs().max()) <= t.eps * t.multiplier + 1e-6
    elif isinstance(t, FrequencyTrigger):  # the luma (the only channel) DCT, at CTRL's coefficients
        d = dct2(y.double()) - dct2(x.double())
        expect = torch.zeros_like(d)
        for r, c in t.coefficients(16, 16):
            expect[:, 0, r, c] = t.magnitude
        assert torch.allclose(d, expect, atol=1e-5)


@pytest.mark.parametrize("factory", [
    lambda c: deneb_patch(channels=c, seed=5),
    lambda c: badnets_patch(size=4, color="rgb", channels=c, seed=5),
])
def test_colour_patterns_on_grey_are_their_luma(factory):
    rgb, grey = factory(3), factory(1)
    assert rgb.pattern.shape[0] == 3 and grey.pattern.shape[0] == 1
    luma = (rgb.pattern * LUMA.view(3, 1, 1)).sum(0, keepdim=True)
    assert torch.equal(grey.pattern, (luma * 255).round() / 255)
    x = _grey_uint8(seed=2).float() / 255
    assert torch.equal(grey(x), rgb(x))  # the RGB trigger on grey images pastes the same luma


def test_frequency_on_grey_perturbs_luma_not_colour():
    t = FrequencyTrigger(magnitude=100 / 255)
    grey = _grey_uint8(size=32, lo=90, hi=160).float() / 255
    rgb = grey.expand(-1, 3, -1, -1)
    y1, y3 = t(grey), t(rgb)
    assert y1.shape == grey.shape
    # CTRL's U/V bump on a grey image stored as RGB turns it colourful; the grey trigger cannot
    assert float((y3[:, 0] - y3[:, 2]).abs().max()) > 0.01
    assert torch.allclose(dct2(y1.double() - grey.double())[:, 0, 15, 15], torch.full((2 * 2,), 100 / 255,
                          dtype=torch.float64), atol=1e-6)


# ------------------------------------------------------------------------------------- attacks
CHEAP = {
    "deneb": dict(budget=2, steps=2, anchor_batch=8, eot=2),  # EOT: through weak crops of grey images
    "clean_label_turner": dict(budget=2, steps=2),
    "label_consistent": dict(steps=2),
    "narcissus": dict(budget=2, steps=2, batch_size=8),
    "interpolation": dict(budget=4),
    "clean_label": dict(budget=2),
    "mosaic": dict(budget=2),
    "freq": dict(budget=2),
    "cl_badnets": dict(budget=2),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_poisons_a_grey_split_in_grey(name, grey_split, tmp_path):
    atk = build_attack(name, target=TARGET, seed=1, progress=False, **CHEAP.get(name, {}))
    ps = atk.poison(grey_split, _tiny_model() if atk.needs_model else None)
    for part in (ps.labeled, ps.unlabeled, ps.test):
        assert part.images.shape[1:] == (1, 16, 16) and part.images.dtype == torch.uint8
    pool = ps.labeled if atk.poisons_labeled else ps.unlabeled
    clean = grey_split.labeled if atk.poisons_labeled else grey_split.unlabeled
    arr = ps.attack["arrays"]
    pos, src = arr["position"], arr["source"]
    assert int(arr["is_poison"].sum()) >= 1
    real = src >= 0
    if bool(real.any()):  # a poison made from an image differs from it
        assert bool((pool.images[pos[real]] != clean.images[src[real]]).any())
    if ps.trigger is not None:
        x = ps.test.float()[:4]
        assert ps.trigger(x).shape == x.shape
    from lightning_ssl_backdoor.data.poisoned_io import load_poisoned_split, save_poisoned_split

    back = load_poisoned_split(save_poisoned_split(tmp_path / f"{name}.npz", ps))
    assert torch.equal(back.unlabeled.images, ps.unlabeled.images) and back.labeled.images.shape[1] == 1
    if name == "deneb":  # the runner's example figure draws grey images
        from lightning_ssl_backdoor.report.figures import example_grid

        assert example_grid(ps, tmp_path / "examples.png").is_file()


# ------------------------------------------------------------------------------------ defenses
def test_depud_gradcam_and_purification_on_grey():
    from lightning_ssl_backdoor.defenses.depud.gradcam import compute_masks
    from lightning_ssl_backdoor.defenses.depud.purify import purify

    raw = _grey_uint8(n=6)
    masks, scores = compute_masks(_tiny_model(2), raw, target_class=1, chunk_size=4)
    assert masks.shape == (6, 16, 16) and masks.dtype == torch.uint8 and scores.shape == (6,)
    x = raw.float() / 255
    mean = x.mean(dim=(0, 2, 3))
    assert mean.shape == (1,)
    full = torch.ones(6, 16, 16)
    out = purify(x, full, "oc", mean)
    assert out.shape == x.shape and torch.allclose(out, mean.view(1, 1, 1, 1).expand_as(x))
    noisy = purify(x, masks.float() / 255, "ocdp", mean, sigma=0.4)
    assert noisy.shape == x.shape and 0.0 <= float(noisy.min()) and float(noisy.max()) <= 1.0


def test_backdoor_invalidator_trains_on_grey(grey_split):
    from lightning_ssl_backdoor.defenses import invalidator as bi

    torch.manual_seed(0)
    m = bi.InvalidatedFixMatch(arch="tiny_cnn", num_classes=10, in_channels=1, weak_pad=1, model_kwargs={"width": 4})
    x = _grey_uint8(n=2).float() / 255
    blurred = m.filter_images(x)
    assert blurred.shape == x.shape and not torch.equal(blurred, x)
    raw = next(iter(SSLDataModule(split=grey_split, batch_size=4, mu=2).train_dataloader()))
    batch = m.on_after_batch_transfer(raw, 0)
    assert batch["unlabeled"]["weak"].shape[1] == 1 and batch["unlabeled"]["strong"].shape[1] == 1
    loss = m.training_step(batch, 0)  # filter, complementary labels and trigger mix-up on grey
    assert torch.isfinite(loss)


def test_dbd_simclr_views_on_grey():
    from lightning_ssl_backdoor.defenses.dbd import SimCLRAugment

    views = SimCLRAugment(jitter_p=1.0, gray_p=1.0, blur_p=1.0)  # every colour op drawn
    x = _grey_uint8(n=8).float() / 255
    v = views(x, generator=torch.Generator().manual_seed(0))
    assert v.shape == x.shape and float(v.min()) >= 0 and float(v.max()) <= 1 and not torch.equal(v, x)


def test_clustering_finds_a_planted_grey_cluster():
    from lightning_ssl_backdoor.defenses import cluster_detect

    images = _grey_uint8(n=60, lo=0, hi=255)
    base = images[0].clone()
    images[50:] = base  # ten identical grey poisons
    images[50:, 0, 0, :5] = torch.arange(10, dtype=torch.uint8).view(10, 1)  # tiny differences
    res = cluster_detect(images, n_neighbors=5, pca_dim=16, min_cluster_size=5)
    assert bool(res.flagged[50:].all()) and res.num_flagged < 20


def test_influence_from_a_grey_training_run(grey_split, tmp_path):
    from lightning_ssl_backdoor.defenses import influence_detect
    from lightning_ssl_backdoor.defenses.dynamics import TrainingDynamicsRecorder
    from lightning_ssl_backdoor.ssl import FixMatch

    torch.manual_seed(0)
    model = FixMatch(arch="tiny_cnn", num_classes=10, in_channels=1, weak_pad=1, model_kwargs={"width": 4})
    rec = TrainingDynamicsRecorder(every_n_steps=1)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=[rec])
    trainer.fit(model, datamodule=SSLDataModule(split=grey_split, batch_size=4, mu=2))
    history = rec.history()
    assert history.shape[1:] == (len(grey_split.unlabeled), 10) and history.shape[0] >= 2
    res = influence_detect(history, k=3, drop_count=5)
    assert res.num_flagged == 5 and res.scores.shape == (len(grey_split.unlabeled),)
