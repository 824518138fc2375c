"""Triggers: pixel-exact placement, no uint8 wrap-around, DCT-exact frequency trigger, manifests."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.data.imageset import quantize
from lightning_ssl_backdoor.errors import ArtifactError, ConfigError, DataFormatError
from lightning_ssl_backdoor.triggers import (
    TRIGGER_FACTORIES,
    BlendTrigger,
    FrequencyTrigger,
    MosaicTrigger,
    NoiseTrigger,
    PatchTrigger,
    badnets_patch,
    build_trigger,
    dct2,
    deneb_patch,
    four_corner_patch,
    idct2,
    rgb_to_yuv,
    trigger_from_manifest,
    warp_from_config,
    yuv_to_rgb,
)


def _img(c=3, h=16, w=16, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(2, c, h, w, generator=g)


def _changed(x, y):
    return (x != y).any(dim=(0, 1))


@pytest.mark.parametrize("corner,rows,cols", [
    ("bottom_right", range(12, 15), range(12, 15)),
    ("top_left", range(1, 4), range(1, 4)),
    ("top_right", range(1, 4), range(12, 15)),
    ("bottom_left", range(12, 15), range(1, 4)),
])
def test_badnets_patch_position_is_pixel_exact(corner, rows, cols):
    t = badnets_patch(size=3, color="white", corner=corner, margin=1)
    x = _img(lo=0.1, hi=0.9)
    y = t(x)
    expect = torch.zeros(16, 16, dtype=torch.bool)
    expect[rows.start : rows.stop, cols.start : cols.stop] = True
    assert torch.equal(_changed(x, y), expect)
    assert torch.equal(t.mask((16, 16)), expect)
    assert torch.all(y[:, :, rows.start : rows.stop, cols.start : cols.stop] == 1.0)


def test_deneb_patch_rows_and_cols_and_pattern():
    t = deneb_patch(channels=3, seed=3)
    H = 32
    x = _img(h=H, w=H, lo=0.2, hi=0.8)
    y = t(x)
    # rows/cols H-8-5 .. H-5-1 (their code), i.e. 19..26 on 32x32
    expect = torch.zeros(H, H, dtype=torch.bool)
    expect[H - 13 : H - 5, H - 13 : H - 5] = True
    assert torch.equal(t.mask((H, H)), expect)
    assert torch.equal(y[:, :, ~expect], x[:, :, ~expect])
    # the pattern: a seeded 4x4 random pattern resized bilinearly to 8x8, on the 1/255 grid
    g = torch.Generator().manual_seed(3)
    small = torch.rand(1, 3, 4, 4, generator=g)
    big = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(t.pattern, big, atol=0.5 / 255 + 1e-6)
    assert torch.equal(t.pattern * 255, (t.pattern * 255).round())
    assert torch.equal(y[0, :, 19:27, 19:27], t.pattern)


def test_four_corner_patch_marks_four_squares():
    t = four_corner_patch(size=2, margin=0)
    m = t.mask((10, 12))
    assert int(m.sum()) == 16
    for r, c in [(0, 0), (0, 10), (8, 0), (8, 10)]:
        assert bool(m[r : r + 2, c : c + 2].all())
    y = t(_img(h=10, w=12, lo=0.0, hi=0.5))
    assert torch.all(y[:, :, m] == 1.0)


def test_gray_and_rgb_patches_on_one_and_three_channels():
    gray = badnets_patch(size=5, color="gray", seed=1)
    rgb = badnets_patch(size=5, color="rgb", seed=1)
    assert gray.pattern.shape == (1, 5, 5) and rgb.pattern.shape == (3, 5, 5)
    y3 = gray(_img(c=3))
    assert torch.equal(y3[:, 0, 10:15, 10:15], y3[:, 2, 10:15, 10:15])  # gray: same on every channel
    y1 = rgb(_img(c=1))
    luma = (rgb.pattern * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    assert torch.allclose(y1[0, 0, 10:15, 10:15], luma, atol=0.5 / 255 + 1e-6)
    assert torch.equal(y1[0, 0, 10:15, 10:15], (luma * 255).round() / 255)  # on the uint8 grid
    with pytest.raises(DataFormatError):
        badnets_patch(size=9, margin=1)(_img(h=8, w=8))


def test_mosaic_grid_and_intensity():
    t = MosaicTrigger(gap=1, intensity=25 / 255)
    x = _img(lo=0.1, hi=0.5)
    y = t(x)
    dots = torch.zeros(16, 16, dtype=torch.bool)
    dots[0::2, 0::2] = True
    assert torch.equal(_changed(x, y), dots)
    assert torch.allclose((y - x)[:, :, dots], torch.full_like(y[:, :, dots], 25 / 255))
    m96 = MosaicTrigger(gap=2).mask(96, 96)
    assert int(m96.sum()) == 32 * 32 and bool(m96[3, 6]) and not bool(m96[1, 0])


def test_additive_triggers_never_wrap_around_near_255():
    x = torch.full((1, 3, 16, 16), 250 / 255)
    for t in [MosaicTrigger(gap=1, intensity=30 / 255), FrequencyTrigger(), BlendTrigger(torch.ones(3, 4, 4), 0.5)]:
        q = quantize(t(x))
        assert int(q.min()) >= 200, t  # saturates at 255 instead of wrapping to small values
        assert float(t(x).max()) <= 1.0
    assert int(quantize(MosaicTrigger(gap=1, intensity=30 / 255)(x)).max()) == 255


def test_dct_is_orthonormal_and_invertible():
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    assert torch.allclose(idct2(dct2(x)), x, atol=1e-12)
    assert torch.allclose((dct2(x) ** 2).sum(), (x ** 2).sum())  # Parseval
    assert torch.allclose(yuv_to_rgb(rgb_to_yuv(x)), x, atol=1e-12)


@pytest.mark.parametrize("size,coefs", [(32, [(15, 15), (31, 31)]), (16, [(7, 7), (15, 15)]), (8, [(3, 3), (7, 7)])])
def test_frequency_changes_only_the_stated_coefficients(size, coefs):
    t = FrequencyTrigger(magnitude=100 / 255)
    assert t.coefficients(size, size) == coefs
    x = _img(h=size, w=size, lo=0.35, hi=0.65)  # mid-range: nothing clips
    y = t(x)
    assert float(y.min()) > 0 and float(y.max()) < 1
    d = dct2(rgb_to_yuv(y.double())) - dct2(rgb_to_yuv(x.double()))
    expect = torch.zeros_like(d)
    for r, c in coefs:
        expect[:, 1:, r, c] = 100 / 255  # U and V only
    assert torch.allclose(d, expect, atol=1e-5)


def test_frequency_on_one_channel_uses_that_channel():
    t = FrequencyTrigger()
    x = _img(c=1, lo=0.35, hi=0.65)
    d = dct2(t(x).double()) - dct2(x.double())
    expect = torch.zeros_like(d)
    expect[:, 0, 7, 7] = expect[:, 0, 15, 15] = 100 / 255
    assert torch.allclose(d, expect, atol=1e-5)


def test_blend_formula_and_resizing():
    p = torch.rand(3, 8, 8)
    t = BlendTrigger(p, alpha=0.1)
    x = _img()
    big = F.interpolate(t.pattern[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(t(x), 0.9 * x + 0.1 * big, atol=1e-6)


def test_warp_identity_at_zero_strength_and_noise_mode():
    x = _img()
    assert torch.allclose(warp_from_config(k=4, s=0.0)(x), x, atol=1e-5)
    t = warp_from_config(k=4, s=0.5, seed=1)
    y = t(x)
    assert not torch.allclose(y, x, atol=1e-3)
    n1 = t.noise(x, generator=torch.Generator().manual_seed(0))
    n2 = t.noise(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(n1, n2) and not torch.allclose(n1, y, atol=1e-4)


def test_noise_trigger_bounds_and_multiplier():
    delta = torch.full((3, 16, 16), 0.5)
    t = NoiseTrigger(delta, eps=16 / 255, multiplier=3.0)
    assert float(t.delta.abs().max()) == pytest.approx(16 / 255)
    x = _img(lo=0.2, hi=0.5)
    assert torch.allclose(t(x), (x + 3 * 16 / 255).clamp(0, 1))
    assert torch.allclose(t.apply_scaled(x, 1.0), x + 16 / 255)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(TRIGGER_FACTORIES))
def test_every_trigger_round_trips_through_its_manifest(name, channels):
    t = build_trigger({"name": name}, (channels, 16, 16))
    manifest = json.loads(json.dumps(t.manifest()))  # JSON-able
    arrays = {k: v.numpy() for k, v in t.arrays().items()}
    t2 = trigger_from_manifest(manifest, arrays)
    assert type(t2) is type(t) and t2.manifest() == t.manifest()
    for size in (8, 16, 20):
        x = _img(c=channels, h=size, w=size, seed=size)
        if isinstance(t, PatchTrigger) and t.pattern.shape[-1] + t.margin > size:
            continue
        y = t(x)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert torch.equal(t2(x), y)


def test_bad_input_raises_one_sentence_errors():
    t = MosaicTrigger()
    with pytest.raises(DataFormatError, match="float"):
        t(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(DataFormatError, match="at least 8x8"):
        t(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ConfigError, match="unknown trigger"):
        build_trigger({"name": "nope"}, (3, 16, 16))
    with pytest.raises(ConfigError, match="does not take"):
        build_trigger({"name": "mosaic", "size": 3}, (3, 16, 16))
    with pytest.raises(ArtifactError):
        trigger_from_manifest({"name": "nope"}, {})
    with pytest.raises(ConfigError):
        PatchTrigger(torch.ones(3, 2, 2), corners=["middle"])
    assert math.isclose(MosaicTrigger().intensity, 25 / 255)
