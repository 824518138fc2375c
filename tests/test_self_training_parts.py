"""Pal et al.'s self-training pieces against hand / brute-force references: RCS0.5 + VFlip flips every
image the teacher labels under T, torch k-means reaches the exhaustive optimum, and Algorithm 2's
cluster -> class maps match majority voting by hand and a brute-force search over permutations."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lightning_ssl_backdoor.augment import CropScaleVFlip
from lightning_ssl_backdoor.data import ImageSet, SSLSplit
from lightning_ssl_backdoor.defenses import build_defense
from lightning_ssl_backdoor.defenses.self_training import (
    SelfTraining,
    SelfTrainingConfig,
    agreement_matrix,
    cluster_pseudo_labels,
    hungarian_labels,
    kmeans,
    majority_labels,
)
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.spec import Spec


# ------------------------------------------------------------------------------ RCS0.5 + VFlip
def test_vflip_is_applied_to_every_image_by_default():
    t = CropScaleVFlip()
    assert t.flip_prob == 1.0
    theta = t.theta(500, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert bool((theta[:, 1, 1] < 0).all())  # every image upside down
    assert torch.allclose(theta[:, 0, 0] * theta[:, 1, 1].abs(), torch.full((500,), 0.5), atol=1e-5)
    x = torch.rand(5, 3, 8, 8)
    pure = CropScaleVFlip(scale=1.0, ratio=(1.0, 1.0))  # no crop: exactly the vertical flip
    assert torch.allclose(pure(x), x.flip(-2), atol=1e-6)
    with pytest.raises(ConfigError, match="flip_prob"):
        CropScaleVFlip(flip_prob=1.5)


class Recorder(nn.Module):
    """A 'model' that remembers every batch it sees and predicts class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return torch.zeros(len(x), 2) + self.w


def _split(n_lab=6, n_unl=5):
    g = torch.Generator().manual_seed(0)
    img = lambda n: torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8)  # noqa: E731
    lab = ImageSet(img(n_lab), torch.arange(n_lab) % 2, ["a", "b"])
    unl = ImageSet(img(n_unl), torch.full((n_unl,), -1), ["a", "b"], torch.arange(n_unl) % 2)
    test = ImageSet(img(4), torch.arange(4) % 2, ["a", "b"])
    return SSLSplit(lab, unl, test, torch.arange(n_lab), torch.arange(n_unl))


def test_teacher_sees_every_labeled_image_flipped_and_unlabeled_as_is():
    split = _split()
    st = SelfTraining(split, SelfTrainingConfig(eval_batch_size=4))  # paper defaults: T on D_L, flip 1.0
    assert st.transform.flip_prob == 1.0 and st.cfg.augment == "labeled" and st.cfg.pseudo_label == "both"
    st.transform = CropScaleVFlip(scale=1.0, ratio=(1.0, 1.0), flip_prob=st.cfg.vflip_prob)  # T = VFlip alone
    model = Recorder()
    pool = st.pseudo_labeled_pool(model, torch.Generator().manual_seed(0))
    seen = torch.cat(model.seen)
    lab = split.labeled.images.float() / 255
    unl = split.unlabeled.images.float() / 255
    assert torch.allclose(seen[: len(lab)], lab.flip(-2), atol=1e-6)  # every pseudo-labelled labeled image
    assert torch.equal(seen[len(lab):], unl)
    assert len(pool["pred"]) == len(lab) + len(unl)
    assert pool["from_labeled"].tolist() == [True] * len(lab) + [False] * len(unl)
    given = {"labeled": (torch.ones(len(lab)), torch.ones(len(lab), dtype=torch.long)),
             "unlabeled": (torch.ones(len(unl)), torch.zeros(len(unl), dtype=torch.long))}
    model.seen.clear()
    pool = st.pseudo_labeled_pool(model, torch.Generator(), given)  # Algorithm 2's round 1
    assert not model.seen and pool["pred"].tolist() == [1] * len(lab) + [0] * len(unl)


def test_ema_weights_label_and_are_returned_when_set(monkeypatch):
    """``module.ema_decay``: the EMA weights (warm-started from the teacher) label every round and
    the final model returned is the EMA of the one trained from scratch, never the raw weights."""
    cfg = SelfTrainingConfig(rounds=2, fraction=0.5, round_steps=2, final_steps=2, batch_size=4, eval_batch_size=8,
                             module={"arch": "tiny_cnn", "model_kwargs": {"width": 4}, "ema_decay": 0.5},
                             accelerator="cpu")
    st = SelfTraining(_split(8, 8), cfg)
    made, labellers = [], []
    new_module, predict = st.new_module, st.predict
    monkeypatch.setattr(st, "new_module", lambda: made.append(new_module()) or made[-1])
    monkeypatch.setattr(st, "predict", lambda m, *a: labellers.append(m) or predict(m, *a))
    teacher = new_module().model
    res = st.run(teacher=teacher)
    rounds_module, final_module = made
    assert rounds_module.ema_model is not None and res.model is final_module.ema_model
    assert res.model is not final_module.model
    assert all(m is rounds_module.ema_model or m is final_module.ema_model for m in labellers)
    assert st.weights(rounds_module) is rounds_module.ema_model
    plain = SelfTraining(_split(), SelfTrainingConfig(module={"ema_decay": None})).new_module()
    assert plain.ema_model is None and st.weights(plain) is plain.model


class Linear(nn.Module):
    """A fixed linear 'model' on flattened pixels (deterministic, view-dependent probabilities)."""

    def __init__(self, d: int, c: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, c, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return x.flatten(1) @ self.w


def test_views_average_the_probabilities_of_independent_draws_of_t():
    """``views: V``: p(x) = 1/V sum_v softmax(f(T_v(x))), T_v the draws of one generator in order;
    the confidence is max p and the class argmax p (by hand against V = 1 calls)."""
    split = _split()
    imgs = split.labeled.images
    model = Linear(imgs[0].numel())
    st3 = SelfTraining(split, SelfTrainingConfig(views=3, eval_batch_size=64))
    conf, pred = st3.predict(model, imgs, True, torch.Generator().manual_seed(5))
    st1 = SelfTraining(split, SelfTrainingConfig(views=1, eval_batch_size=64))
    g = torch.Generator().manual_seed(5)
    x = imgs.float() / 255
    probs = torch.stack([model(st1.labeling_view(x, g)).softmax(1) for _ in range(3)]).mean(0)
    assert torch.allclose(conf, probs.max(1).values, atol=1e-6) and torch.equal(pred, probs.argmax(1))
    one = st1.predict(model, imgs, True, torch.Generator().manual_seed(5))[0]
    assert not torch.allclose(one, conf)  # one draw differs from the mean of three
    plain = st3.predict(model, imgs, False, torch.Generator())[0]  # no T: views are irrelevant
    assert torch.allclose(plain, model(x).softmax(1).max(1).values, atol=1e-6)


# ------------------------------------------------------------------------------------ k-means
def _brute_force_inertia(x: torch.Tensor, k: int) -> float:
    best = float("inf")
    for assign in itertools.product(range(k), repeat=len(x)):
        a = torch.tensor(assign)
        if len(set(assign)) < k:
            continue
        total = sum(float(((x[a == j] - x[a == j].mean(0)) ** 2).sum()) for j in range(k))
        best = min(best, total)
    return best


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (3, 2)])
def test_kmeans_reaches_the_exhaustive_optimum(k, seed):
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(seed))
    res = kmeans(x, k, n_init=20, seed=seed)
    assert res.inertia == pytest.approx(_brute_force_inertia(x, k), rel=1e-5)
    for j in range(k):  # the centres are the means of their clusters
        assert torch.allclose(res.centres[j], x[res.assign == j].mean(0), atol=1e-5)


def test_kmeans_by_hand_batched_and_seeded():
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0], [10.0, 12.0]])
    res = kmeans(x, 2, seed=3, batch_size=2)  # distances computed two rows at a time
    centres = sorted(res.centres.tolist())
    assert centres == [[0.0, 0.5], [10.0, 11.0]]
    assert res.inertia == pytest.approx(0.5 + 2.0)
    assert res.assign[0] == res.assign[1] != res.assign[2] == res.assign[3] == res.assign[4]
    big = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    a, b = kmeans(big, 4, seed=7), kmeans(big, 4, seed=7)
    assert torch.equal(a.assign, b.assign) and a.inertia == b.inertia
    with pytest.raises(ConfigError, match="k-means"):
        kmeans(x, 9)


# --------------------------------------------------------------------- cluster pseudo-labels
def test_majority_vote_by_hand():
    assign = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    labels = torch.tensor([2, 2, 1, 0, 1, 1, 1, 0])
    # cluster 0: {2, 2, 1} -> 2; cluster 1: {0, 1} tie -> 0 (smaller index); cluster 2: {1, 1, 0} -> 1;
    # cluster 3 has no labeled member -> the overall majority label 1
    assert majority_labels(assign, labels, 4, 3).tolist() == [2, 0, 1, 1]
    assert agreement_matrix(assign, labels, 4, 3)[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_assignment_matches_brute_force_over_permutations(seed):
    g = torch.Generator().manual_seed(seed)
    k = 4
    assign = torch.randint(0, k, (40,), generator=g)
    labels = torch.randint(0, k, (40,), generator=g)
    m = agreement_matrix(assign, labels, k, k)
    best = max(sum(int(m[j, p[j]]) for j in range(k)) for p in itertools.permutations(range(k)))
    got = hungarian_labels(assign, labels, k, k)
    assert sorted(got.tolist()) == list(range(k))  # one class per cluster
    assert sum(int(m[j, got[j]]) for j in range(k)) == best
    with pytest.raises(ConfigError, match="as many clusters"):
        hungarian_labels(assign, labels, k, k + 1)


def test_cluster_pseudo_labels_take_the_nearest_centre():
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    cls = torch.tensor([2, 0, 2])
    h = torch.tensor([[3.0, 0.2], [0.1, 5.0], [-2.0, -0.1], [1.0, 1.1]])
    conf, pred = cluster_pseudo_labels(h, centres, cls)
    assert pred.tolist() == [2, 0, 2, 0]  # nearest centres 0, 1, 2, 1 (after normalising h)
    z = torch.nn.functional.normalize(h, dim=1)
    assert torch.allclose(conf, torch.stack([z[0, 0], z[1, 1], -z[2, 0], z[3, 1]]), atol=1e-6)


def test_bad_options_are_one_sentence():
    for spec, match in [(Spec("self_training", {"rounds": 0}), "rounds"),
                        (Spec("self_training", {"vflip_prob": 2}), "vflip_prob"),
                        (Spec("self_training", {"round_steps": 0}), "round_steps"),
                        (Spec("self_training", {"ema_decay": 1.5}), "ema_decay"),
                        (Spec("self_training", {"ema_decay": "last"}), "ema_decay"),
                        (Spec("self_training", {"views": 0}), "views"),
                        (Spec("self_training_simclr", {"assignment": "greedy"}), "assignment"),
                        (Spec("self_training_simclr", {"pseudo_label": "labeled"}), "pseudo_label"),
                        (Spec("strong_augment", {"crop_scale": 0}), "crop scale")]:
        with pytest.raises(ConfigError, match=match) as e:
            build_defense(spec)
        assert str(e.value).endswith(".")
