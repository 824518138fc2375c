"""UPure (Lee et al., WACV 2025): the DCT pair, the band it perturbs, its distortion bound, and a tiny
setting where purifying the poisoned training images lowers the ASR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from lightning_ssl_backdoor.augment.dct import dct2, dct_matrix, idct2
from lightning_ssl_backdoor.data import ImageSet
from lightning_ssl_backdoor.data.imageset import quantize
from lightning_ssl_backdoor.defenses import DEFENSES, build_defense
from lightning_ssl_backdoor.defenses.upure import UPure, band_mask, distortion_bound, perturb_high_band, resolve_tau
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.spec import Spec
from tests.baseline_setting import CLASSES, TARGET, make_images, new_model, train_plain


def test_dct_pair_matches_scipy_ortho_and_round_trips():
    x = torch.rand(2, 3, 16, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    assert np.allclose(dct2(x).numpy(), ref, atol=1e-12)
    assert np.allclose(idct2(torch.from_numpy(ref)).numpy(), scipy.fft.idctn(ref, axes=(-2, -1), norm="ortho"), atol=1e-12)
    assert torch.allclose(idct2(dct2(x)), x, atol=1e-12)
    d = dct_matrix(7, dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(7, dtype=torch.float64), atol=1e-12)  # orthonormal
    assert torch.allclose(dct2(x).pow(2).sum(), x.pow(2).sum())  # Parseval
    with pytest.raises(ConfigError):
        dct2(torch.zeros(4, 4, dtype=torch.uint8))


def test_perturbation_touches_only_the_high_band():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=g)
    y = perturb_high_band(x, tau=8, sigma=0.1, generator=g)
    diff = dct2(y - x)
    mask = band_mask(16, 16, 8).bool()
    assert mask.sum() == 64 and mask[8:, 8:].all() and not mask[:8].any() and not mask[:, :8].any()
    assert diff[..., ~mask].abs().max() < 1e-12  # the low frequencies (DC included) are untouched
    assert (diff[..., mask].abs() > 0).all()
    assert abs(float(diff[..., mask].std()) - 0.1) < 0.01  # N(0, sigma^2) per coefficient
    assert torch.equal(perturb_high_band(x, tau=0, sigma=0.5), x) or torch.allclose(perturb_high_band(x, 0, 0.5), x)
    assert resolve_tau(None, 16, 16) == 8 and resolve_tau(None, 32, 32) == 16  # the paper's 16 at 32 px
    with pytest.raises(ConfigError):
        resolve_tau(17, 16, 16)


def test_clean_images_stay_within_the_distortion_bound():
    g = torch.Generator().manual_seed(2)
    images, _ = make_images(256, g)
    x = images.double() / 255
    tau, sigma = 6, 8 / 255
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    y = perturb_high_band(x, tau, sigma, noise=noise)
    band = (sigma * band_mask(12, 12, tau).double() * noise).pow(2).sum(dim=(1, 2, 3))
    assert torch.allclose((y - x).pow(2).sum(dim=(1, 2, 3)), band)  # Parseval: all of it is the band's
    q = quantize(y).double() / 255
    # clipping onto [0, 1] only shrinks the error; rounding adds at most half a grey level per pixel
    per_image = (q - x).pow(2).sum(dim=(1, 2, 3)).sqrt()
    assert (per_image <= band.sqrt() + 0.5 / 255 * math.sqrt(3 * 144) + 1e-9).all()
    # the mean squared error per pixel sits at the bound tau^2 sigma^2 / (H W) (+ rounding's 1/12 level^2)
    bound = distortion_bound(tau, sigma, 12, 12)
    mse = float((q - x).pow(2).mean())
    assert mse <= bound * 1.1 + (1 / 255) ** 2 / 12 * 1.1
    assert mse >= bound * 0.8
    # the defense's own path (authors' default sigma = 1/255) keeps the same bound
    out, sq = UPure(tau=6).purify(images, seed=0)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert float(sq.mean()) / (3 * 144) <= distortion_bound(6, 1 / 255, 12, 12) * 1.2 + (1 / 255) ** 2 / 12 * 1.2
    again, _ = UPure(tau=6).purify(images, seed=0)
    assert torch.equal(out, again)  # one fixed draw per seed


def test_registry_options_and_bad_input():
    assert DEFENSES["upure"] is UPure
    d = build_defense(Spec(name="upure", init_args={"tau": 4, "sigma": 0.1}))
    assert (d.tau, d.sigma) == (4, 0.1)
    for bad in ({"tau": -1}, {"sigma": -0.1}, {"sigma": float("nan")}, {"chunk": 0}):
        with pytest.raises(ConfigError):
            UPure(**bad)


def _checker(images: torch.Tensor, amplitude: int = 8) -> torch.Tensor:
    """A repetitive trigger: +-amplitude grey levels in a 1-px checkerboard (its energy sits at the
    highest DCT frequency, inside UPure's band)."""
    h, w = images.shape[-2:]
    sign = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2) * 2 - 1
    return (images.int() + amplitude * sign).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def _asr(model, images, labels) -> float:
    keep = labels != TARGET
    return float((model(_checker(images[keep]).float() / 255).argmax(1) == TARGET).float().mean())


@torch.no_grad()
def _ca(model, images, labels) -> float:
    return float((model(images.float() / 255).argmax(1) == labels).float().mean())


def test_upure_lowers_asr_on_a_tiny_setting():
    """Poison-label stand-in for the pseudo-label hijack: 10% of the training images carry the checker
    and the target label. Purifying the training set (once, noise well above the trigger's in-band
    amplitude: sigma 0.3 on the 6 x 6 block of 12 px images, pixel RMSE 38 grey levels) leaves the network
    nothing stable in the band to tie to the target. At sigma 0.1 the same setting keeps 85% ASR: the
    noise has to drown the trigger's in-band energy, not merely sit on the same band."""
    g = torch.Generator().manual_seed(0)
    tr_x, tr_y = make_images(600, g)
    te_x, te_y = make_images(300, g)
    cand = torch.nonzero(tr_y != TARGET).flatten()
    pois = cand[torch.randperm(cand.numel(), generator=g)[:60]]
    tr_x[pois] = _checker(tr_x[pois])
    tr_y = tr_y.clone()
    tr_y[pois] = TARGET
    plain = train_plain(new_model(0), tr_x, tr_y, steps=250)
    purified, _ = UPure(tau=6, sigma=0.3).purify(tr_x, seed=0)
    defended = train_plain(new_model(0), purified, tr_y, steps=250)
    asr_plain, asr_def = _asr(plain, te_x, te_y), _asr(defended, te_x, te_y)
    assert asr_plain > 0.9  # the backdoor is there
    assert asr_def < 0.4 and asr_def < asr_plain - 0.5
    assert _ca(defended, te_x, te_y) > 0.9 and CLASSES == 4


def test_filter_replaces_only_the_unlabeled_images():
    g = torch.Generator().manual_seed(3)
    x, y = make_images(40, g)
    from lightning_ssl_backdoor.data import SSLSplit

    split = SSLSplit(
        labeled=ImageSet(x[:8], y[:8], ["a", "b", "c", "d"]),
        unlabeled=ImageSet(x[8:32], torch.full((24,), -1), ["a", "b", "c", "d"], true_labels=y[8:32]),
        test=ImageSet(x[32:], y[32:], ["a", "b", "c", "d"]),
        labeled_indices=torch.arange(8), unlabeled_indices=torch.arange(8, 32),
    )

    class Ctx:
        seed = 0

    new, info = UPure(tau=6, sigma=4 / 255).filter(split, Ctx())
    assert torch.equal(new.labeled.images, split.labeled.images) and torch.equal(new.test.images, split.test.images)
    assert not torch.equal(new.unlabeled.images, split.unlabeled.images)
    assert torch.equal(new.unlabeled.true_labels, split.unlabeled.true_labels)
    assert info["tau"] == 6 and info["rmse_clean_255"] <= info["rmse_bound_255"] * 1.2 + 0.3
