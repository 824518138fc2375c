"""Attacks on tiny digits data with a tiny surrogate: each changes predictions as its paper says."""

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_ssl_backdoor.attacks import (
    ATTACKS,
    DENSITIES,
    build_attack,
    deneb_perturbation,
    density_cdf_fn,
    sample_alphas,
    sample_beta_1,
)
from lightning_ssl_backdoor.attacks.adversarial import frozen, predict
from lightning_ssl_backdoor.attacks.interpolation import density_name
from lightning_ssl_backdoor.data.imageset import quantize
from lightning_ssl_backdoor.data.readers import read_digits
from lightning_ssl_backdoor.data.split import make_split
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models import Classifier

TARGET = 3


@pytest.fixture(scope="module")
def split():
    train = read_digits("train", image_size=16)
    test = read_digits("test", image_size=16)
    return make_split(train, test, labels_per_class=12, seed=0, num_unlabeled=400)


@pytest.fixture(scope="module")
def theta0(split):
    from lightning_ssl_backdoor.attacks.surrogate import train_surrogate

    return train_surrogate(split.labeled, steps=200, seed=0, progress=False)


def _rows(ps):
    arr = ps.attack["arrays"]
    return arr["position"], arr["source"]


# ------------------------------------------------------------------------------------------ DeNeB
def test_deneb_strong_poisons_hit_target_and_weak_keep_prediction(split, theta0):
    atk = build_attack("deneb", target=TARGET, budget=16, steps=120, seed=1, progress=False)
    bn_before = {k: v.clone() for k, v in theta0.state_dict().items()}
    ps = atk.poison(split, theta0)
    assert all(torch.equal(v, theta0.state_dict()[k]) for k, v in bn_before.items())  # weights frozen
    assert all(p.requires_grad for p in theta0.parameters())  # restored after
    pos, src = _rows(ps)
    kind = ps.attack["arrays"]["kind"]
    assert len(pos) == 32 and int((kind == 1).sum()) == 16
    n0 = len(split.unlabeled)
    assert torch.equal(pos, torch.arange(n0, n0 + 32))  # appended
    assert torch.equal(ps.unlabeled.images[:n0], split.unlabeled.images)  # originals stay
    assert torch.all(ps.unlabeled_indices[n0:] == -1) and bool(ps.unlabeled_poison_mask[n0:].all())
    assert not bool(ps.unlabeled_poison_mask[:n0].any())
    assert torch.all(ps.unlabeled.labels == -1)
    imgs = ps.unlabeled.images[pos]
    clean = split.unlabeled.images[src]
    pred = predict(theta0, imgs.float() / 255)
    clean_pred = predict(theta0, clean.float() / 255)
    strong, weak = kind == 1, kind == 0
    assert float((pred[strong] == TARGET).float().mean()) >= 0.9
    assert float((pred[weak] == clean_pred[weak]).float().mean()) >= 0.8
    # eps = 32/255 holds after quantisation: weak vs clean, strong vs clean + trigger
    assert int((imgs[weak].int() - clean[weak].int()).abs().max()) <= 32
    triggered = quantize(ps.trigger(clean.float() / 255))
    assert int((imgs[strong].int() - triggered[strong].int()).abs().max()) <= 32
    w = ps.attack["arrays"]["w"]
    assert bool(((w > 0) & (w < 1)).all())
    assert ps.attack["info"]["theta0_strong_target_rate"] >= 0.9


def test_deneb_batched_equals_one_image_at_a_time(split, theta0):
    g = torch.Generator().manual_seed(0)
    x = split.unlabeled.float()[:4]
    anchors = split.labeled.float()[split.labeled.labels == TARGET]
    bidx = torch.stack([torch.randperm(len(anchors), generator=g)[:8] for _ in range(4)])
    kw = dict(target=TARGET, steps=40, nn_every=7, progress=False)
    # float64: the same computation whatever the chunk size, up to rounding
    batched = deneb_perturbation(theta0, x, anchors, bidx, chunk_size=4, precision="float64", **kw)
    single = deneb_perturbation(theta0, x, anchors, bidx, chunk_size=1, precision="float64", **kw)
    assert float(batched.abs().max()) > 0.01 and batched.dtype == torch.float32
    assert torch.allclose(batched, single, atol=1e-6)
    # float32 (the default): batch-size-dependent conv rounding can cross ReLU kinks, still ~1e-4
    b32 = deneb_perturbation(theta0, x, anchors, bidx, chunk_size=4, **kw)
    s32 = deneb_perturbation(theta0, x, anchors, bidx, chunk_size=1, **kw)
    assert torch.allclose(b32, s32, atol=1e-3) and torch.allclose(b32, batched, atol=1e-3)


def test_deneb_eot_poisons_survive_the_weak_crop(split, theta0):
    """``eot``: Alg. 1 averaged over random weak crops gives strong poisons that theta_0 still
    labels as the target after a random crop (what FixMatch pseudo-labels), more often than the
    plain Alg. 1; chunking does not change the result."""
    from lightning_ssl_backdoor.augment.weak import WeakAugment

    crop = WeakAugment(flip=False, pad=2)
    rates = {}
    for eot in (0, 4):
        atk = build_attack("deneb", target=TARGET, budget=12, steps=80, seed=2, eot=eot, progress=False)
        ps = atk.poison(split, theta0)
        pos = ps.attack["arrays"]["position"][ps.attack["arrays"]["kind"] == 1]
        x = ps.unlabeled.images[pos].float() / 255
        g = torch.Generator().manual_seed(0)
        rates[eot] = float(torch.stack([(predict(theta0, crop(x, generator=g)) == TARGET).float().mean()
                                        for _ in range(5)]).mean())
    assert rates[4] >= 0.5 and rates[4] > rates[0] + 0.3, rates  # 80 iterations only
    assert ps.attack["info"]["theta0_strong_target_rate_weak_view"] >= 0.5
    g = torch.Generator().manual_seed(0)
    x = split.unlabeled.float()[:3]
    anchors = split.labeled.float()[split.labeled.labels == TARGET]
    bidx = torch.stack([torch.randperm(len(anchors), generator=g)[:8] for _ in range(3)])
    offsets = torch.randint(0, 5, (3, 20, 2, 2), generator=g, dtype=torch.uint8)
    kw = dict(target=TARGET, steps=20, progress=False, precision="float64", eot_offsets=offsets, eot_pad=2)
    together = deneb_perturbation(theta0, x, anchors, bidx, chunk_size=3, **kw)
    apart = deneb_perturbation(theta0, x, anchors, bidx, chunk_size=1, **kw)
    assert torch.allclose(together, apart, atol=1e-6)
    with pytest.raises(ConfigError, match="eot_offsets"):
        deneb_perturbation(theta0, x, anchors, bidx, **{**kw, "eot_pad": 1})


def test_deneb_eot_flip_and_feature_term_options(split, theta0):
    """``eot_flip``: a view that flips makes Alg. 1 optimise through the mirror (so the poisons
    survive the victim's flipped weak views); ``feature_term="authors"`` pulls g(u + P) closer to
    the anchors than Eq. 16 as printed; neither makes the result depend on chunking."""
    g = torch.Generator().manual_seed(0)
    x = split.unlabeled.float()[:3]
    anchors = split.labeled.float()[split.labeled.labels == TARGET]
    bidx = torch.stack([torch.randperm(len(anchors), generator=g)[:8] for _ in range(3)])
    ones = torch.ones((3, 10, 1, 2), dtype=torch.uint8)  # pad 1, offset 1: the un-shifted crop
    kw = dict(target=TARGET, steps=10, progress=False, precision="float64", eot_pad=1, lr=0.5)
    flipped = deneb_perturbation(theta0, x, anchors, bidx, eot_offsets=torch.cat([ones, ones[..., :1]], 3), **kw)
    mirrored = deneb_perturbation(theta0, x.flip(-1), anchors, bidx, eot_offsets=ones, **kw).flip(-1)
    assert torch.allclose(flipped, mirrored, atol=1e-6)
    assert not torch.allclose(flipped, deneb_perturbation(theta0, x, anchors, bidx, eot_offsets=ones, **kw))
    atk = build_attack("deneb", target=TARGET, budget=4, steps=3, seed=2, eot=2, eot_flip=True, progress=False)
    ps = atk.poison(split, theta0)
    assert int(torch.as_tensor(ps.attack["arrays"]["triggered"]).sum()) == 4
    assert int(ps.triggered_poison_mask().sum()) == 4 and int(ps.unlabeled_poison_mask.sum()) == 8
    offsets = torch.randint(0, 2, (3, 30, 2, 3), generator=g, dtype=torch.uint8)
    kw = dict(kw, steps=30, eot_offsets=offsets)
    dists = {}
    for term in ("paper", "authors"):
        together = deneb_perturbation(theta0, x, anchors, bidx, chunk_size=3, feature_term=term, **kw)
        apart = deneb_perturbation(theta0, x, anchors, bidx, chunk_size=1, feature_term=term, **kw)
        assert torch.allclose(together, apart, atol=1e-6)
        with torch.no_grad():
            f = theta0.features((x + together).float())
            dists[term] = float(torch.cdist(f, theta0.features(anchors)).min(1).values.mean())
    assert dists["authors"] < dists["paper"], dists
    with pytest.raises(ConfigError, match="feature_term"):
        build_attack("deneb", target=TARGET, feature_term="nope")


def test_deneb_tie_w_uses_one_draw_for_both_poisons(split, theta0):
    """w1 = w2 by default (the paper's finding after Eq. 20); independent draws with tie_w=False."""
    kinds = {}
    for tie in (True, False):
        ps = build_attack("deneb", target=TARGET, budget=6, steps=0, seed=3, tie_w=tie, progress=False).poison(split, theta0)
        arr = ps.attack["arrays"]
        kinds[tie] = (arr["w"][arr["kind"] == 0], arr["w"][arr["kind"] == 1])
    assert torch.equal(*kinds[True]) and not torch.equal(*kinds[False])
    assert torch.equal(kinds[True][0], kinds[False][0])  # w1 is the same first draw either way


def test_deneb_learning_rate_decay_fires():
    # Linear model, lambda = 0, sign updates: every step moves each pixel by exactly eta_n.
    torch.manual_seed(0)
    model = Classifier(torch.nn.Flatten(), 3 * 8 * 8, 2, mean=(0.0,) * 3, std=(1.0,) * 3)
    x = torch.full((1, 3, 8, 8), 0.5)
    anchors = torch.rand(2, 3, 8, 8)
    kw = dict(target=1, eps=1.0, steps=4, lr=0.01, decay_every=2, lam=0.0, update="sign", progress=False)
    d = deneb_perturbation(model, x, anchors, torch.tensor([[0, 1]]), lr_decay=0.5, **kw)
    assert torch.allclose(d.abs(), torch.full_like(d, 0.01 * (1 + 1 + 0.5 + 0.5)))
    d1 = deneb_perturbation(model, x, anchors, torch.tensor([[0, 1]]), lr_decay=1.0, **kw)
    assert torch.allclose(d1.abs(), torch.full_like(d, 0.04))


def test_beta_draws_follow_beta_1_9():
    w = sample_beta_1(4000, 9.0, torch.Generator().manual_seed(0)).double().numpy()
    assert stats.kstest(w, stats.beta(1, 9).cdf).pvalue > 0.01
    assert abs(w.mean() - 0.1) < 0.01


# ------------------------------------------------------------------------------ clean-label family
@pytest.mark.parametrize("name", ["clean_label", "mosaic", "freq", "cl_badnets"])
def test_clean_label_style_attacks_trigger_target_class_images(split, name):
    atk = build_attack(name, target=TARGET, budget=5, seed=2, progress=False,
                       trigger={"name": "badnets", "size": 3} if name == "clean_label" else None)
    ps = atk.poison(split)
    pos, src = _rows(ps)
    assert torch.all(split.unlabeled.true_labels[src] == TARGET)
    expected = quantize(ps.trigger(split.unlabeled.float()[src]))
    assert torch.equal(ps.unlabeled.images[pos], expected)
    assert ps.target == TARGET and int(ps.unlabeled_poison_mask.sum()) == 5


def test_turner_enhancement_pushes_away_from_true_class(split, theta0):
    ps = build_attack("clean_label_turner", target=TARGET, budget=8, eps=16 / 255, steps=10,
                      trigger={"name": "badnets", "size": 2}, progress=False).poison(split, theta0)
    pos, src = _rows(ps)
    clean = split.unlabeled.float()[src]
    poisoned = ps.unlabeled.images[pos].float() / 255
    with torch.no_grad(), frozen(theta0):
        p_clean = theta0(ps.trigger(clean)).softmax(1)[:, TARGET].mean()
        p_poison = theta0(poisoned).softmax(1)[:, TARGET].mean()
    assert float(p_poison) < float(p_clean) - 0.1
    outside = ~ps.trigger.mask((16, 16))
    dev = (ps.unlabeled.images[pos].int() - split.unlabeled.images[src].int()).abs()[:, :, outside]
    assert int(dev.max()) <= 16 and int(dev.max()) > 0


def test_narcissus_trigger_pushes_to_target_at_test_time(split, theta0):
    ps = build_attack("narcissus", target=TARGET, budget=4, steps=60, progress=False).poison(split, theta0)
    trig = ps.trigger
    assert trig.multiplier == 3.0 and float(trig.delta.abs().max()) <= 16 / 255 + 1e-7
    test = split.test
    x = test.float()[test.targets != TARGET]
    before = (predict(theta0, x) == TARGET).float().mean()
    after = (predict(theta0, trig(x)) == TARGET).float().mean()
    assert float(after) > float(before) + 0.2
    pos, src = _rows(ps)
    dev = (ps.unlabeled.images[pos].int() - split.unlabeled.images[src].int()).abs()
    assert int(dev.max()) <= 16


# ------------------------------------------------------------------------------- labeled-set attacks
@pytest.mark.parametrize("name", ["badnets", "blended", "wanet"])
def test_poison_label_attacks_relabel_non_target_images(split, name):
    ps = build_attack(name, target=TARGET, seed=0, progress=False).poison(split)
    pos, src = _rows(ps)
    is_p = ps.attack["arrays"]["is_poison"]
    n = len(split.labeled)
    assert int(is_p.sum()) == round(0.05 * n) == int(ps.labeled_poison_mask.sum())
    assert len(ps.labeled) == n and torch.equal(pos, src)  # replaced in place
    assert torch.all(split.labeled.labels[src[is_p]] != TARGET)
    assert torch.all(ps.labeled.labels[pos[is_p]] == TARGET)
    assert torch.equal(ps.labeled.true_labels[pos], split.labeled.labels[src])
    assert torch.equal(ps.labeled.images[pos[is_p]], quantize(ps.trigger(split.labeled.float()[src[is_p]])))
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[pos] = False
    assert torch.equal(ps.labeled.images[untouched], split.labeled.images[untouched])
    if name == "wanet":  # noise-mode samples: modified, true labels, not in the poison mask
        noise = pos[~is_p]
        assert len(noise) == round(0.2 * n)
        assert torch.equal(ps.labeled.labels[noise], split.labeled.labels[noise])
        assert not bool(ps.labeled_poison_mask[noise].any())
        assert bool((ps.labeled.images[noise] != split.labeled.images[noise]).any())


def test_label_consistent_perturbs_target_class_within_eps(split, theta0):
    ps = build_attack("label_consistent", target=TARGET, eps=16 / 255, steps=10, progress=False).poison(split, theta0)
    pos, src = _rows(ps)
    assert torch.all(split.labeled.labels[src] == TARGET) and torch.all(ps.labeled.labels[pos] == TARGET)
    assert len(pos) == round(0.25 * int((split.labeled.labels == TARGET).sum()))
    outside = ~ps.trigger.mask((16, 16))
    dev = (ps.labeled.images[pos].int() - split.labeled.images[src].int()).abs()[:, :, outside]
    assert 0 < int(dev.max()) <= 16
    with torch.no_grad(), frozen(theta0):
        p_adv = theta0(ps.labeled.images[pos].float() / 255).softmax(1)[:, TARGET].mean()
        p_clean = theta0(ps.trigger(split.labeled.float()[src])).softmax(1)[:, TARGET].mean()
    assert float(p_adv) < float(p_clean)


# --------------------------------------------------------------------------------------- Carlini
def test_interpolation_path_endpoints_and_blend(split):
    ps = build_attack("interpolation", target=TARGET, budget=12, seed=4, progress=False).poison(split)
    arr, info = ps.attack["arrays"], ps.attack["info"]
    alpha, pos = arr["alpha"], arr["position"]
    x_src = split.labeled.images[info["source_index"]]
    x_star = split.test.images[info["target_image"]]
    assert int(split.labeled.labels[info["source_index"]]) == TARGET
    assert int(split.test.targets[info["target_image"]]) != TARGET
    assert float(alpha[0]) == 0.0 and float(alpha[-1]) == 1.0 and bool(((alpha >= 0) & (alpha <= 1)).all())
    assert torch.equal(ps.unlabeled.images[pos[0]], x_src)
    assert torch.equal(ps.unlabeled.images[pos[-1]], x_star)
    a = alpha.view(-1, 1, 1, 1)
    blend = quantize(((1 - a) * x_src.double() / 255 + a * x_star.double() / 255).float())
    assert torch.equal(ps.unlabeled.images[pos], blend)
    assert ps.trigger is None and ps.target == TARGET and len(pos) == 12


@pytest.mark.parametrize("name", list(DENSITIES))
def test_alphas_follow_each_table3_density(name):
    a = sample_alphas(name, 3000, torch.Generator().manual_seed(7)).numpy()
    assert stats.kstest(a, density_cdf_fn(name)).pvalue > 0.001


def test_ks_test_tells_densities_apart():
    a = sample_alphas("x", 3000, torch.Generator().manual_seed(0)).numpy()
    assert stats.kstest(a, density_cdf_fn("1-x")).pvalue < 1e-6
    assert density_name("1.5 - x") == density_name("default") == "1.5-x"
    assert np.isclose(density_cdf_fn("1.5-x")(np.array([0.5]))[0], (1.5 * 0.5 - 0.125) / 1.0)


def test_interpolation_zero_knowledge_support_paths(split):
    ps = build_attack("interpolation", target=TARGET, budget=20, source="unlabeled", support_paths=2,
                      support_fraction=0.4, density="1", progress=False).poison(split)
    arr, info = ps.attack["arrays"], ps.attack["info"]
    path, pos, alpha = arr["path"], arr["position"], arr["alpha"]
    assert [int((path == k).sum()) for k in range(3)] == [12, 4, 4]
    x_src = split.unlabeled.images[info["source_index"]]
    assert int(split.unlabeled.true_labels[info["source_index"]]) == TARGET
    for k, sup in enumerate(info["support_images"], start=1):
        rows = pos[path == k]
        assert int(split.unlabeled.true_labels[sup]) == TARGET
        assert torch.equal(ps.unlabeled.images[rows[-1]], split.unlabeled.images[sup])  # alpha 1
        assert bool((alpha[path == k] > 0).all())  # the duplicate alpha-0 endpoint (x') is dropped
    assert torch.equal(ps.unlabeled.images[pos[0]], x_src)


def test_interpolation_fine_tuning_variant_starts_at_adversarial_point(split, theta0):
    test_pred = predict(theta0, split.test.float())
    t_img = int(torch.nonzero((split.test.targets != TARGET) & (test_pred != TARGET)).flatten()[0])
    ps = build_attack("interpolation", target=TARGET, budget=6, source="adversarial", target_image=t_img,
                      progress=False).poison(split, theta0)
    info, pos, alpha = ps.attack["info"], ps.attack["arrays"]["position"], ps.attack["arrays"]["alpha"]
    assert info["adversarial_success"] and info["target_image"] == t_img
    x_src = ps.unlabeled.images[pos[0]]  # alpha 0: x' = x* + delta, already labeled y* by theta_0
    assert float(alpha[0]) == 0.0
    assert int(predict(theta0, x_src[None].float() / 255)[0]) == TARGET
    x_star = split.test.images[t_img]
    assert torch.equal(ps.unlabeled.images[pos[-1]], x_star)
    linf = int((x_src.int() - x_star.int()).abs().max())
    assert linf == round(255 * info["adversarial_linf"]) and 0 < linf < 128
    with pytest.raises(ConfigError, match="needs a surrogate"):
        build_attack("interpolation", target=TARGET, source="adversarial", progress=False).poison(split)


# ----------------------------------------------------------------------- budgets, injection, seeds
def test_budget_forms(split):
    n_u = len(split.unlabeled)
    n_t = int((split.unlabeled.true_labels == TARGET).sum())
    assert int(build_attack("mosaic", target=TARGET, budget=7).poison(split).unlabeled_poison_mask.sum()) == 7
    ps = build_attack("mosaic", target=TARGET, budget_rate=0.02).poison(split)
    assert int(ps.unlabeled_poison_mask.sum()) == round(0.02 * n_u)
    ps = build_attack("mosaic", target=TARGET, target_class_rate=0.5).poison(split)
    assert int(ps.unlabeled_poison_mask.sum()) == round(0.5 * n_t)
    with pytest.raises(ConfigError, match="only one"):
        build_attack("mosaic", budget=3, budget_rate=0.1)
    with pytest.raises(ConfigError, match="eligible"):
        build_attack("mosaic", target=TARGET, budget=n_t + 1).poison(split)


def test_replace_injection_overwrites_in_place(split):
    ps = build_attack("mosaic", target=TARGET, budget=6, injection="replace").poison(split)
    pos, src = _rows(ps)
    assert len(ps.unlabeled) == len(split.unlabeled) and torch.equal(pos, src)
    assert torch.equal(ps.unlabeled_indices, split.unlabeled_indices)
    assert torch.equal(torch.nonzero(ps.unlabeled_poison_mask).flatten(), torch.sort(src).values)
    assert bool((ps.unlabeled.images[pos] != split.unlabeled.images[src]).any())


def test_selection_is_seeded(split):
    a = build_attack("mosaic", target=TARGET, budget=6, seed=5).poison(split)
    b = build_attack("mosaic", target=TARGET, budget=6, seed=5).poison(split)
    c = build_attack("mosaic", target=TARGET, budget=6, seed=6).poison(split)
    assert torch.equal(a.unlabeled.images, b.unlabeled.images)
    assert torch.equal(_rows(a)[1], _rows(b)[1]) and not torch.equal(_rows(a)[1], _rows(c)[1])


def test_registry_configs_rebuild_and_bad_options():
    for name, cls in ATTACKS.items():
        atk = build_attack(name, target=2)
        cfg = atk.config()
        assert cfg["name"] == name and cfg["target"] == 2
        again = build_attack(**{("name" if k == "name" else k): v for k, v in cfg.items()})
        assert again.config() == cfg
    with pytest.raises(ConfigError, match="unknown attack"):
        build_attack("nope")
    with pytest.raises(ConfigError, match="does not take"):
        build_attack("deneb", epsilon=0.1)
    with pytest.raises(ConfigError, match="needs a surrogate"):
        build_attack("deneb").poison(make_split(read_digits("train", 8), read_digits("test", 8), labels_per_class=2))
