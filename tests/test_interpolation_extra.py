"""Carlini's interpolation attack: the ``source_choice`` / ``target_choice`` options (nearest in pixel space)."""

from __future__ import annotations

import pytest
import torch

from lightning_ssl_backdoor.attacks.interpolation import InterpolationAttack, nearest_row, nearest_to_set
from lightning_ssl_backdoor.errors import ConfigError

TARGET = 0


def _d2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).sum())


def test_nearest_helpers_match_brute_force():
    g = torch.Generator().manual_seed(0)
    cand = torch.rand(40, 1, 5, 5, generator=g)
    x = torch.rand(1, 5, 5, generator=g)
    brute = min(range(len(cand)), key=lambda i: (_d2(cand[i], x), i))
    assert nearest_row(cand, x) == brute
    anchors = torch.rand(6, 1, 5, 5, generator=g)
    brute_set = min(range(len(cand)), key=lambda i: (min(_d2(cand[i], a) for a in anchors), i))
    assert nearest_to_set(cand, anchors) == brute_set
    with pytest.raises(ConfigError):
        nearest_row(cand[:0], x)


@pytest.mark.parametrize("seed", [0, 3])
def test_nearest_source_is_the_true_nearest_labeled_target_class_image(digits_split, seed):
    ps = InterpolationAttack(target=TARGET, seed=seed, budget=10, source_choice="nearest",
                             progress=False).poison(digits_split)
    info = ps.attack["info"]
    x_star = digits_split.test.float()[info["target_image"]]
    rows = torch.nonzero(digits_split.labeled.labels == TARGET).flatten().tolist()
    brute = min(rows, key=lambda r: (_d2(digits_split.labeled.float()[r], x_star), r))
    assert info["source_index"] == brute and info["source_choice"] == "nearest"
    # same x* as the paper's random source for this seed (the target draw comes first)
    rnd = InterpolationAttack(target=TARGET, seed=seed, budget=10, progress=False).poison(digits_split)
    assert rnd.attack["info"]["target_image"] == info["target_image"]
    assert info["path_l2"] <= rnd.attack["info"]["path_l2"] + 1e-9
    pos = ps.attack["arrays"]["position"]
    assert torch.equal(ps.unlabeled.images[pos[0]], digits_split.labeled.images[brute])


def test_nearest_target_is_the_test_image_closest_to_the_labeled_target_class(digits_split):
    ps = InterpolationAttack(target=TARGET, seed=1, budget=10, target_choice="nearest",
                             progress=False).poison(digits_split)
    info = ps.attack["info"]
    test, lab = digits_split.test, digits_split.labeled
    anchors = lab.float()[lab.labels == TARGET]
    rows = torch.nonzero(test.targets != TARGET).flatten().tolist()
    brute = min(rows, key=lambda r: (min(_d2(test.float()[r], a) for a in anchors), r))
    assert info["target_image"] == brute and info["target_image_label"] != TARGET


def test_nearest_unlabeled_source_and_bad_choices(digits_split):
    ps = InterpolationAttack(target=TARGET, seed=2, budget=10, source="unlabeled", source_choice="nearest",
                             progress=False).poison(digits_split)
    info = ps.attack["info"]
    x_star = digits_split.test.float()[info["target_image"]]
    u = digits_split.unlabeled
    rows = torch.nonzero(u.targets == TARGET).flatten().tolist()
    assert info["source_index"] == min(rows, key=lambda r: (_d2(u.float()[r], x_star), r))
    with pytest.raises(ConfigError, match="source_choice"):
        InterpolationAttack(target=TARGET, source_choice="closest")
    with pytest.raises(ConfigError, match="adversarial"):
        InterpolationAttack(target=TARGET, source="adversarial", source_choice="nearest")


def test_targets_give_each_trial_its_own_label(digits_split):
    """``targets``: seed s attacks targets[s % len]; the poisons' source is of that class and the
    split reports it (Carlini Table 1's (x*, y*) pairs as seeded trials)."""
    for seed, expect in ((0, 2), (1, 5), (2, 7), (3, 2)):
        att = InterpolationAttack(seed=seed, budget=10, targets=[2, 5, 7], progress=False)
        assert att.target == expect and att.config()["targets"] == [2, 5, 7]
        out = att.poison(digits_split)
        assert out.target == expect
        assert int(digits_split.test.targets[out.attack["info"]["target_image"]]) != expect
        src = out.attack["info"]["source_index"]
        assert int(digits_split.labeled.labels[src]) == expect
    for bad in ([], [1, -1], "3", [True]):
        with pytest.raises(ConfigError, match="targets"):
            InterpolationAttack(targets=bad)
