"""Tests of lightning_ssl_backdoor.augment: functional ops against brute-force / PIL references,
per-sample batching of StrongAugment, Cutout, WeakAugment crops, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from lightning_ssl_backdoor.augment import (
    FUNCTIONS,
    OPS,
    StrongAugment,
    WeakAugment,
    auto_contrast,
    brightness,
    color,
    contrast,
    cutout,
    equalize,
    identity,
    op_magnitude,
    posterize,
    rotate,
    sharpness,
    shear_x,
    shear_y,
    solarize,
    translate_x,
    translate_y,
)
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def quantised(b=4, c=3, h=8, w=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g).float() / 255


def to_pil(img: torch.Tensor) -> Image.Image:
    arr = (img * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def from_pil(im: Image.Image) -> torch.Tensor:
    arr = np.asarray(im)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------- the op list and magnitudes


def test_ops_are_the_fourteen_of_fixmatch():
    expected = {
        "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
        "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
    }
    assert len(OPS) == 14 and set(OPS) == expected and set(FUNCTIONS) == expected


def test_op_magnitude_table():
    lv = torch.tensor([1.0, 10.0])
    assert torch.allclose(op_magnitude("Brightness", lv, 10, 32, 32), torch.tensor([0.14, 0.95]))
    assert torch.equal(op_magnitude("Posterize", torch.tensor([1.0, 5.0, 9.9, 10.0]), 10, 32, 32),
                       torch.tensor([4.0, 6.0, 7.0, 8.0]))
    assert torch.allclose(op_magnitude("Rotate", lv, 10, 32, 32), torch.tensor([3.0, 30.0]))
    assert torch.allclose(op_magnitude("ShearY", lv, 10, 32, 32), torch.tensor([0.03, 0.3]))
    assert torch.allclose(op_magnitude("Solarize", lv, 10, 32, 32),
                          torch.tensor([(256 - 25.6) / 255, 0.0]))
    assert torch.allclose(op_magnitude("TranslateX", lv, 10, 16, 40), torch.tensor([1.2, 12.0]))
    assert torch.allclose(op_magnitude("TranslateY", lv, 10, 16, 40), torch.tensor([0.48, 4.8]))
    assert torch.equal(op_magnitude("Equalize", lv, 10, 32, 32), torch.zeros(2))


# ---------------------------------------------------------------- functional ops


def test_identity_unchanged():
    x = torch.rand(3, 3, 5, 6)
    y = identity(x, torch.rand(3))
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_solarize_against_per_pixel_loop():
    x = torch.rand(3, 3, 4, 5)
    thr = torch.tensor([0.0, 0.5, 1.01])
    y = solarize(x, thr)
    for b in range(3):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    v = x[b, c, i, j].item()
                    ref = 1 - v if v >= thr[b].item() else v
                    assert abs(y[b, c, i, j].item() - ref) < 1e-6
    assert torch.allclose(y[2], x[2]) and torch.allclose(y[0], 1 - x[0])


def test_solarize_matches_pil():
    x = quantised(2, 3, 6, 6)
    for t in (0, 77, 128, 256):
        y = solarize(x, t / 255.0)
        for b in range(2):
            ref = from_pil(ImageOps.solarize(to_pil(x[b]), t))
            assert torch.allclose(y[b], ref, atol=1e-6)


def test_posterize_against_bit_mask():
    x = quantised(5, 3, 6, 6)
    bits = torch.tensor([1, 4, 6, 7, 8])
    y = posterize(x, bits)
    q = (x * 255).round().long()
    for b in range(5):
        mask = (0xFF << (8 - int(bits[b]))) & 0xFF
        assert torch.equal((y[b] * 255).round().long(), q[b] & mask)
        assert torch.allclose(y[b], from_pil(ImageOps.posterize(to_pil(x[b]), int(bits[b]))))
    assert torch.allclose(y[4], x[4])


def test_auto_contrast_maps_min_to_0_max_to_1_per_channel():
    x = 0.2 + 0.5 * torch.rand(4, 3, 6, 7)
    x[1, 2] = 0.3  # a constant channel stays as it is
    y = auto_contrast(x)
    lo, hi = y.amin(dim=(2, 3)), y.amax(dim=(2, 3))
    keep = torch.ones(4, 3, dtype=torch.bool)
    keep[1, 2] = False
    assert torch.allclose(lo[keep], torch.zeros(11), atol=1e-6)
    assert torch.allclose(hi[keep], torch.ones(11), atol=1e-6)
    assert torch.equal(y[1, 2], x[1, 2])
    x0, y0 = x[0, 0], y[0, 0]
    assert torch.allclose(y0, (x0 - x0.min()) / (x0.max() - x0.min()), atol=1e-6)
    xq = quantised(1, 3, 8, 8)
    assert (y := auto_contrast(xq)).shape == xq.shape
    assert torch.allclose(y[0], from_pil(ImageOps.autocontrast(to_pil(xq[0]))), atol=1.01 / 255)


def numpy_equalize(channel: np.ndarray) -> np.ndarray:
    """Brute-force histogram equalisation of one uint8 channel (the ImageOps.equalize rule)."""
    hist = np.bincount(channel.ravel(), minlength=256)
    nonzero = hist[hist > 0]
    step = (nonzero.sum() - nonzero[-1]) // 255
    if step == 0:
        return channel.copy()
    lut, acc = [], step // 2
    for i in range(256):
        lut.append(min(255, acc // step))
        acc += hist[i]
    return np.array(lut, dtype=np.uint8)[channel]


def test_equalize_against_numpy_and_pil():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 3, 10, 9, generator=g) ** 3 * 180).round() / 255  # skewed histograms
    x[3, 1] = 40 / 255  # constant channel: unchanged
    y = equalize(x)
    q = (x * 255).round().byte().numpy()
    for b in range(4):
        for c in range(3):
            ref = numpy_equalize(q[b, c]).astype(np.float32) / 255
            assert np.allclose(y[b, c].numpy(), ref, atol=1e-6)
        assert torch.allclose(y[b], from_pil(ImageOps.equalize(to_pil(x[b]))), atol=1e-6)
    assert torch.equal(y[3, 1], x[3, 1])
    gray = quantised(2, 1, 7, 7)
    assert torch.allclose(equalize(gray)[0], from_pil(ImageOps.equalize(to_pil(gray[0]))))


@pytest.mark.parametrize(
    "fn,enhancer",
    [(brightness, ImageEnhance.Brightness), (color, ImageEnhance.Color),
     (contrast, ImageEnhance.Contrast), (sharpness, ImageEnhance.Sharpness)],
)
def test_enhance_ops_match_pil(fn, enhancer):
    x = quantised(3, 3, 8, 8, seed=2)
    factors = torch.tensor([0.05, 0.5, 0.95])
    y = fn(x, factors)
    assert torch.allclose(fn(x, torch.ones(3)), x, atol=1e-6)  # factor 1 is the identity
    for b in range(3):
        ref = from_pil(enhancer(to_pil(x[b])).enhance(float(factors[b])))
        assert (y[b] - ref).abs().max() <= 2.01 / 255


def test_color_is_identity_on_one_channel_and_grays_rgb():
    x = torch.rand(2, 1, 5, 5)
    assert torch.equal(color(x, torch.tensor([0.0, 0.3])), x)
    rgb = torch.rand(2, 3, 5, 5)
    gray = color(rgb, 0.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


def test_translate_shifts_by_expected_pixels():
    x = torch.rand(2, 3, 6, 7)
    y = translate_x(x, torch.tensor([2.0, -3.0]))
    assert torch.allclose(y[0, :, :, 2:], x[0, :, :, :-2], atol=1e-6)
    assert torch.allclose(y[0, :, :, :2], torch.full((3, 6, 2), 0.5))  # gray fill
    assert torch.allclose(y[1, :, :, :-3], x[1, :, :, 3:], atol=1e-6)
    assert torch.allclose(y[1, :, :, -3:], torch.full((3, 6, 3), 0.5))
    z = translate_y(x, torch.tensor([1.0, -2.0]))
    assert torch.allclose(z[0, :, 1:], x[0, :, :-1], atol=1e-6)
    assert torch.allclose(z[1, :, :-2], x[1, :, 2:], atol=1e-6)


def test_rotate_zero_is_identity_and_90_is_rot90():
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(rotate(x, 0.0), x, atol=1e-6)
    assert torch.allclose(rotate(x, 90.0), torch.rot90(x, 1, (2, 3)), atol=1e-5)
    assert torch.allclose(rotate(x, -90.0), torch.rot90(x, -1, (2, 3)), atol=1e-5)
    xq = quantised(1, 3, 8, 8)
    ref = from_pil(to_pil(xq[0]).rotate(90))  # PIL: positive angle is counter-clockwise
    assert torch.allclose(rotate(xq, 90.0)[0], ref, atol=1e-5)
    y = rotate(torch.zeros(1, 1, 9, 9), 45.0)
    assert torch.allclose(y[0, 0, 0, 0], torch.tensor(0.5))  # corners come from outside: gray
    assert y[0, 0, 4, 4] == 0


def test_shear_is_the_pil_affine_on_a_linear_ramp():
    h = w = 12
    ramp_x = ((torch.arange(w) + 0.5) / w).expand(1, 1, h, w).clone()
    y = shear_x(ramp_x, 0.25)
    for i in range(h):
        for j in range(w):
            src = (j + 0.5) + 0.25 * (i + 0.5)
            if 0.5 <= src <= w - 0.5:
                assert abs(y[0, 0, i, j].item() - src / w) < 1e-5
    ramp_y = ramp_x.transpose(2, 3).contiguous()
    z = shear_y(ramp_y, -0.25)
    for i in range(h):
        for j in range(w):
            src = (i + 0.5) - 0.25 * (j + 0.5)
            if 0.5 <= src <= h - 0.5:
                assert abs(z[0, 0, i, j].item() - src / h) < 1e-5
    assert torch.allclose(shear_x(ramp_x, 0.0), ramp_x, atol=1e-6)


def test_cutout_function_fills_exactly_the_box():
    x = torch.rand(2, 1, 6, 6)
    y = cutout(x, torch.tensor([[1, 3, 2, 5], [0, 0, 0, 0]]))
    assert torch.equal(y[1], x[1])
    assert torch.all(y[0, 0, 1:3, 2:5] == 0.5)
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[1:3, 2:5] = False
    assert torch.equal(y[0, 0][mask], x[0, 0][mask])


def test_ops_reject_bad_batches():
    with pytest.raises(DataFormatError):
        StrongAugment()(torch.rand(3, 32, 32))
    with pytest.raises(DataFormatError):
        StrongAugment()(torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8))
    with pytest.raises(DataFormatError):
        WeakAugment()(torch.rand(2, 4, 8, 8))
    with pytest.raises(DataFormatError):
        brightness(torch.rand(2, 3, 4, 4), torch.ones(3))


# ---------------------------------------------------------------- StrongAugment


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(6, 3, 32, 32), (5, 1, 12, 20)])
def test_strong_shape_dtype_range_device(device, shape):
    x = torch.rand(*shape, device=device)
    y = StrongAugment()(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    y64 = StrongAugment(n=3, p=1.0)(x.double())
    assert y64.dtype == torch.float64 and 0 <= y64.min() and y64.max() <= 1


def test_strong_reproducible_under_seed_and_generator():
    x = torch.rand(16, 3, 16, 16)
    aug = StrongAugment()
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    assert torch.equal(a, b)
    assert not torch.equal(aug(x), a)  # the RNG moved on
    c = aug(x, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(123)
    d = aug(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(c, d)


def test_images_in_one_batch_get_different_operations():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).repeat(64, 1, 1, 1)  # 64 identical images
    aug = StrongAugment(n=2, m=10)
    y = aug(x)
    prm = aug.last_params
    pairs = {tuple(r) for r in prm.ops.tolist()}
    assert len(pairs) > 30  # 196 possible ordered pairs
    assert len(set(prm.ops.flatten().tolist())) == 14
    assert prm.levels.unique().numel() == 128 and prm.levels.min() >= 1 and prm.levels.max() <= 10
    assert 0.3 < prm.apply.float().mean() < 0.7
    distinct = {tuple(img.flatten()[::37].tolist()) for img in y}
    assert len(distinct) > 50 and not torch.equal(y[0], y[1])


def test_batched_application_equals_per_image_reference():
    """The masked, batched slots give exactly what applying each image's own ops one by one does."""
    torch.manual_seed(1)
    x = torch.rand(40, 3, 12, 12)
    aug = StrongAugment(n=3, m=10, p=0.7, cutout=0.25)
    y = aug(x)
    prm = aug.last_params
    for i in range(40):
        img = x[i : i + 1]
        for s in range(3):
            if not prm.apply[i, s]:
                continue
            name = aug.ops[int(prm.ops[i, s])]
            mag = op_magnitude(name, prm.levels[i, s : s + 1], 10, 12, 12)
            if name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
                mag = mag * prm.signs[i, s]
            img = FUNCTIONS[name](img, mag)
        img = cutout(img, prm.boxes[i : i + 1])
        assert torch.allclose(y[i : i + 1], img, atol=1e-5), i
    assert torch.equal(aug.apply_params(x, prm), y)


def test_strong_without_ops_or_cutout_is_identity():
    x = torch.rand(8, 3, 10, 10)
    assert torch.equal(StrongAugment(p=0.0, cutout=0.0)(x), x)
    assert torch.equal(StrongAugment(n=0, cutout=0.0)(x), x)
    assert torch.equal(StrongAugment(ops=["Identity"], p=1.0, cutout=0.0)(x), x)


def test_cutout_grays_one_square_of_the_right_size_per_image():
    torch.manual_seed(2)
    x = torch.rand(64, 3, 32, 32) * 0.4  # no pixel is 0.5 before cutout
    aug = StrongAugment(ops=["Identity"], cutout=0.5)
    y = aug(x)
    boxes = aug.last_params.boxes
    full = 0
    for i in range(64):
        changed = (y[i] != x[i]).any(dim=0)
        rows, cols = changed.any(dim=1).nonzero().view(-1), changed.any(dim=0).nonzero().view(-1)
        t, b, l, r = boxes[i].tolist()
        assert (rows.min().item(), rows.max().item() + 1) == (t, b)
        assert (cols.min().item(), cols.max().item() + 1) == (l, r)
        assert changed.sum().item() == (b - t) * (r - l)  # one solid rectangle
        assert torch.all(y[i][:, changed] == 0.5)
        assert b - t <= 16 and r - l <= 16 and b - t >= 8 and r - l >= 8  # centre is inside
        full += (b - t, r - l) == (16, 16)
    assert full > 10  # most centres are far enough from the border for a whole 16x16 square


def test_strong_rejects_bad_config():
    bad = ({"n": -1}, {"m": 0}, {"p": 1.5}, {"cutout": 2.0}, {"ops": ["Blur"]}, {"ops": []})
    for kwargs in bad:
        with pytest.raises(ConfigError):
            StrongAugment(**kwargs)
    assert "n=2" in repr(StrongAugment())


# ---------------------------------------------------------------- WeakAugment


@pytest.mark.parametrize("device", DEVICES)
def test_weak_crops_are_shifted_crops_of_the_reflect_padded_image(device):
    torch.manual_seed(4)
    x = torch.rand(32, 3, 10, 12, device=device)
    aug = WeakAugment(pad=3)
    y = aug(x)
    assert y.shape == x.shape and y.device == x.device
    prm = aug.last_params
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3), mode="reflect")
    for i in range(32):
        t, l = int(prm.top[i]), int(prm.left[i])
        ref = padded[i, :, t : t + 10, l : l + 12]
        ref = ref.flip(-1) if prm.flip[i] else ref
        assert torch.equal(y[i], ref)
    assert prm.top.min() >= 0 and prm.top.max() <= 6 and prm.left.max() <= 6
    assert 5 < int(prm.flip.sum()) < 27 and len(set(zip(prm.top.tolist(), prm.left.tolist()))) > 10


def test_weak_options_and_reproducibility():
    x = torch.rand(16, 1, 8, 8)
    assert torch.equal(WeakAugment(flip=False, pad=0)(x), x)
    aug = WeakAugment(flip=False, padding_mode="constant")
    y = aug(x)
    assert not aug.last_params.flip.any()
    t, l = int(aug.last_params.top[0]), int(aug.last_params.left[0])
    ref = torch.nn.functional.pad(x[:1], (4, 4, 4, 4))[0, :, t : t + 8, l : l + 8]
    assert torch.equal(y[0], ref)
    torch.manual_seed(7)
    a = WeakAugment()(x)
    torch.manual_seed(7)
    assert torch.equal(WeakAugment()(x), a)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(WeakAugment()(x, generator=g1), WeakAugment()(x, generator=g2))
    for kwargs in ({"pad": -1}, {"padding_mode": "mirror"}):
        with pytest.raises(ConfigError):
            WeakAugment(**kwargs)
    with pytest.raises(ConfigError):
        WeakAugment(pad=8)(x)  # reflect padding needs pad < size


# ---------------------------------------------------------------- helpers and the benchmark


def test_warp_affine_accepts_2x3_matrices_and_nearest_mode():
    from lightning_ssl_backdoor.augment.ops import grayscale, warp_affine

    x = torch.rand(2, 3, 6, 6)
    shift = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).repeat(2, 1, 1)  # content right 1
    for mode in ("bilinear", "nearest"):
        y = warp_affine(x, shift, fill=0.25, mode=mode)
        assert torch.allclose(y[..., 1:], x[..., :-1], atol=1e-6)
        assert torch.allclose(y[..., 0], torch.full((2, 3, 6), 0.25))
    gray = grayscale(x)
    assert gray.shape == (2, 1, 6, 6)
    assert torch.allclose(gray[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert "pad=4" in repr(WeakAugment())


def test_benchmark_pil_policy_and_report(tmp_path):
    import importlib.util
    import json
    import random
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "augment_speed.py"
    spec = importlib.util.spec_from_file_location("augment_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    random.seed(0)
    arrays = np.random.default_rng(0).integers(0, 100, (6, 16, 16, 3), dtype=np.uint8)
    out = bench.pil_strong(arrays)
    assert out.shape == arrays.shape and out.dtype == np.uint8
    assert all((img == 128).all(axis=2).sum() >= 16 for img in out)  # a cutout square at least 4x4
    assert not np.array_equal(out, arrays)
    threads = torch.get_num_threads()
    res = bench.run(batch=4, size=8, warmup=0, repeats=1, threads=threads + 1)
    assert torch.get_num_threads() == threads  # restored
    assert {r["torch_threads"] for r in res["rows"]} == {None, 1, threads + 1}
    assert {r["device"] for r in res["rows"]} >= {"cpu"} and res["rows"][0]["images_per_s"] > 0
    assert isinstance(res["bar_met"], bool) and res["bar_ratio"] > 0
    md = bench.markdown(res)
    assert "| PIL per image" in md and "shared" in md
    bench.atomic_write(tmp_path / "r.json", json.dumps(res))
    assert json.loads((tmp_path / "r.json").read_text())["batch_size"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ---------------------------------------------------------------- Kornia backing, one channel

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def test_kornia_functions_chosen_against_pil():
    """The Kornia functions behind Posterize / Solarize / Equalize / AutoContrast, called raw, give
    PIL's results on 8-bit images, except where ops.py adds glue: normalize_min_max maps a
    constant channel to 0 (PIL keeps it), and Kornia reads levels as trunc(255 x) (PIL holds
    round(255 x)), so off-grid pixels are rounded first."""
    import kornia

    x = quantised(4, 3, 9, 9, seed=5)
    x[1, 0] = 77 / 255  # constant channel
    for b in range(4):
        img = to_pil(x[b])
        for bits in (1, 4, 7, 8):
            k = kornia.enhance.posterize(x[b : b + 1], bits)[0]
            assert torch.equal((k * 255).round(), (from_pil(ImageOps.posterize(img, bits)) * 255).round())
        for t in (0, 100, 255):
            ref = from_pil(ImageOps.solarize(img, t))
            assert torch.allclose(kornia.enhance.solarize(x[b : b + 1], t / 255.0)[0], ref, atol=1e-6)
        assert torch.allclose(kornia.enhance.equalize(x[b : b + 1])[0], from_pil(ImageOps.equalize(img)))
    raw = kornia.enhance.normalize_min_max(x, 0.0, 1.0)
    assert torch.all(raw[1, 0] == 0) and not torch.all(auto_contrast(x)[1, 0] == 0)
    assert torch.equal(auto_contrast(x)[1, 0], x[1, 0])
    off_grid = torch.full((1, 1, 4, 4), 99.6 / 255)  # PIL would hold level 100
    off_grid[0, 0, 0] = 20 / 255
    assert torch.equal(equalize(off_grid), equalize(torch.round(off_grid * 255) / 255))
    assert torch.allclose(posterize(off_grid, 8), torch.round(off_grid * 255) / 255)


@pytest.mark.parametrize("name", OPS)
def test_every_op_keeps_one_channel_and_acts_on_luma(name):
    """A grey [B, 1, H, W] batch stays one channel, and every op gives what it gives on the same grey
    image copied into RGB (whose luma is the grey value): colour ops act on the single channel as on
    luma, Color is the identity."""
    g = quantised(6, 1, 12, 10, seed=7)
    mags = op_magnitude(name, torch.linspace(1, 10, 6), 10, 12, 10)
    if name in GEOMETRIC:
        mags = mags * torch.tensor([1.0, -1.0]).repeat(3)
    y1 = FUNCTIONS[name](g, mags)
    y3 = FUNCTIONS[name](g.expand(-1, 3, -1, -1).contiguous(), mags)
    assert y1.shape == g.shape and y1.dtype == g.dtype
    assert 0 <= y1.min() and y1.max() <= 1
    for c in range(3):
        assert torch.allclose(y3[:, c : c + 1], y1, atol=1e-5), (name, c)
    if name == "Color":
        assert torch.equal(y1, g)


@pytest.mark.parametrize(
    "fn,pil",
    [(brightness, lambda im, f: ImageEnhance.Brightness(im).enhance(f)),
     (contrast, lambda im, f: ImageEnhance.Contrast(im).enhance(f)),
     (sharpness, lambda im, f: ImageEnhance.Sharpness(im).enhance(f)),
     (color, lambda im, f: ImageEnhance.Color(im).enhance(f)),
     (auto_contrast, lambda im, f: ImageOps.autocontrast(im)),
     (equalize, lambda im, f: ImageOps.equalize(im)),
     (posterize, lambda im, f: ImageOps.posterize(im, int(round(f * 8)))),
     (solarize, lambda im, f: ImageOps.solarize(im, round(f * 255)))],
)
def test_colour_ops_on_one_channel_match_pil_mode_L(fn, pil):
    x = quantised(3, 1, 9, 9, seed=8)
    f = torch.tensor([0.25, 0.5, 0.875])
    mag = (f * 8).round() if fn is posterize else f
    mag = (f * 255).round() / 255 if fn is solarize else mag
    y = fn(x, mag)
    for b in range(3):
        ref = from_pil(pil(to_pil(x[b]), float(f[b])))  # to_pil gives a mode "L" image here
        assert ref.shape == (1, 9, 9)
        assert (y[b] - ref).abs().max() <= 2.01 / 255, (fn.__name__, b)


@pytest.mark.parametrize("shape", [(4, 1, 11, 9), (4, 3, 11, 9)])
def test_gaussian_filter_is_kornia_gaussian_blur_on_one_and_three_channels(shape):
    import kornia

    from lightning_ssl_backdoor.augment.gaussian import GaussianFilter

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(9))
    for radius in (0.75, 1.0):
        f = GaussianFilter(radius)
        y = f(x)
        size = len(f.kernel)
        ref = kornia.filters.gaussian_blur2d(x, size, (radius, radius), border_type="replicate")
        assert y.shape == x.shape and torch.allclose(y, ref, atol=1e-6)
        for c in range(shape[1]):  # channels are filtered independently
            assert torch.allclose(f(x[:, c : c + 1]), y[:, c : c + 1], atol=1e-6)


def test_strong_and_weak_on_grey_batches_stay_grey():
    torch.manual_seed(11)
    g = torch.rand(32, 1, 16, 16)
    aug = StrongAugment(n=3, p=1.0)
    y = aug(g)
    assert y.shape == g.shape and 0 <= y.min() and y.max() <= 1
    y3 = aug.apply_params(g.expand(-1, 3, -1, -1).contiguous(), aug.last_params)
    assert torch.allclose(y3[:, :1], y, atol=1e-5) and torch.allclose(y3[:, 2:], y, atol=1e-5)
    w = WeakAugment()
    assert w(g).shape == g.shape
