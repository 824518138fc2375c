"""Static-shape augmentation (issue 32): the weak crop and the strong RandAugment give, for a fixed
draw of per-sample parameters, the pixels of the grouped implementation they replace (a per-image
reference built from the functional ops of :mod:`lightning_ssl_backdoor.augment.ops`, which equals
the grouped ``apply_params`` of commit 99660c0 exactly), draw the same per-sample distribution, and
run with no host synchronisation and no data-dependent shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from lightning_ssl_backdoor.augment import FUNCTIONS, OPS, StrongAugment, WeakAugment, op_magnitude
from lightning_ssl_backdoor.augment import ops as F

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def images(b=56, c=3, h=12, w=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=g).float() / 255
    x[0, 0] = 0.25  # a flat channel (AutoContrast leaves it) and a near-flat image (Equalize's step 0)
    x[1] = 0.5
    x[1, :, 0, 0] = 0.75
    return x


def reference_weak(x, prm, pad, mode="reflect"):
    """Image by image: pad, slice the window, mirror (the definition in WeakAugment's docstring)."""
    _, _, h, w = x.shape
    outs = []
    for i in range(len(x)):
        p = TF.pad(x[i:i + 1], (pad,) * 4, mode=mode) if pad else x[i:i + 1]
        t, l = int(prm.top[i]), int(prm.left[i])
        o = p[..., t:t + h, l:l + w]
        outs.append(o.flip(-1) if bool(prm.flip[i]) else o)
    return torch.cat(outs)


def reference_strong(x, prm, aug: StrongAugment):
    """Image by image, slot by slot: the functional op of each drawn name at its magnitude, then Cutout."""
    h, w = x.shape[-2:]
    out = x.clone()
    for i in range(len(x)):
        img = out[i:i + 1]
        for s in range(prm.ops.shape[1]):
            if not bool(prm.apply[i, s]):
                continue
            name = aug.ops[int(prm.ops[i, s])]
            mag = op_magnitude(name, prm.levels[i:i + 1, s], aug.m, h, w)
            if name in GEOMETRIC:
                mag = mag * prm.signs[i:i + 1, s]
            img = FUNCTIONS[name](img, mag)
        out[i:i + 1] = img
    if aug.cutout > 0:
        out = F.cutout(out, prm.boxes, fill=aug.fill)
    return out


@pytest.mark.parametrize("pad,mode,flip", [(4, "reflect", True), (2, "replicate", True), (0, "reflect", True),
                                            (3, "constant", False)])
def test_weak_gather_equals_per_image_crop(pad, mode, flip):
    x = images(b=20, h=10, w=9)
    aug = WeakAugment(flip=flip, pad=pad, padding_mode=mode)
    y = aug(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, reference_weak(x, aug.last_params, pad, mode))
    assert y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("mode", ["grouped", "masked"])
@pytest.mark.parametrize("channels", [3, 1])
def test_strong_equals_per_image_reference(mode, channels):
    x = images(b=112, c=channels)
    aug = StrongAugment(n=2, m=10, p=0.9, mode=mode)
    y = aug(x, generator=torch.Generator().manual_seed(2))
    ref = reference_strong(x, aug.last_params, aug)
    # every op drawn at least once in each slot
    assert all(len(set((aug.last_params.ops[:, s][aug.last_params.apply[:, s]]).tolist())) == 14 for s in range(2))
    diff = (y - ref).abs()
    if mode == "grouped":
        assert diff.max() <= 1e-6
    else:  # a second op reads the first one's float output: a value within rounding of a level's tie may
        # land on the next 8-bit level in Equalize / Posterize / Solarize (1 pixel in 48,384 here)
        assert diff.max() <= 1 / 255 + 1e-6 and (diff > 2e-5).float().mean() < 1e-3


@pytest.mark.parametrize("name", OPS)
def test_each_op_alone_equals_its_functional_op(name):
    x = images(b=48)
    aug = StrongAugment(n=1, p=1.0, ops=[name], cutout=0.0, mode="masked")
    y = aug(x, generator=torch.Generator().manual_seed(7))
    assert (y - reference_strong(x, aug.last_params, aug)).abs().max() <= 5e-6  # the warp's float rounding


def test_strong_masked_on_a_subset_of_ops_and_no_cutout():
    x = images(b=40)
    aug = StrongAugment(n=3, m=5, p=1.0, cutout=0.0, ops=["Equalize", "Rotate", "Posterize"], mode="masked")
    y = aug(x, generator=torch.Generator().manual_seed(3))
    diff = (y - reference_strong(x, aug.last_params, aug)).abs()
    assert diff.max() <= 1 / 255 + 1e-6 and (diff > 2e-5).float().mean() < 1e-3


def test_same_parameters_give_the_same_batch_in_both_modes():
    x = images(b=64)
    grouped, masked = StrongAugment(mode="grouped"), StrongAugment(mode="masked")
    prm = grouped.sample_params(64, 12, 12, generator=torch.Generator().manual_seed(4))
    diff = (grouped.apply_params(x, prm) - masked.apply_params(x, prm)).abs()
    assert diff.max() <= 1 / 255 + 1e-6 and (diff > 2e-5).float().mean() < 1e-3


def test_per_sample_distribution_of_ops_and_magnitudes():
    """Each image draws its n ops uniformly from the 14, applies each with probability p, levels
    U[1, m], signs +-1 with probability 1/2, and the cutout centre uniformly (chi-square-free bounds
    at 20,000 draws: a few standard errors)."""
    aug = StrongAugment(n=2, m=10, p=0.5)
    prm = aug.sample_params(10_000, 32, 32, generator=torch.Generator().manual_seed(5))
    counts = torch.bincount(prm.ops.flatten(), minlength=14).float() / prm.ops.numel()
    assert (counts - 1 / 14).abs().max() < 0.006
    assert abs(prm.apply.float().mean().item() - 0.5) < 0.01
    assert prm.levels.min() >= 1 and prm.levels.max() <= 10 and abs(prm.levels.mean().item() - 5.5) < 0.05
    assert abs((prm.signs > 0).float().mean().item() - 0.5) < 0.01
    rows = (prm.boxes[:, 0] + prm.boxes[:, 1]).float()  # centres spread over the whole image
    assert rows.min() < 10 and rows.max() > 50
    weak = WeakAugment(pad=4).sample_params(10_000, generator=torch.Generator().manual_seed(6))
    assert abs(weak.flip.float().mean().item() - 0.5) < 0.015
    assert torch.equal(torch.bincount(weak.top).nonzero().flatten(), torch.arange(9))


def test_strong_mode_is_checked():
    from lightning_ssl_backdoor.errors import ConfigError

    with pytest.raises(ConfigError, match="mode"):
        StrongAugment(mode="fast")
