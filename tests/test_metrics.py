"""Metrics against brute-force loops and scikit-learn."""

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.metrics import (
    AttackSuccessRate,
    CleanAccuracy,
    attack_success_rate,
    auroc,
    clean_accuracy,
    detection_metrics,
)


def random_preds(seed, n=200, c=4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    noise = torch.randint(0, c, (n,), generator=g)
    clean = torch.where(torch.rand(n, generator=g) < 0.7, labels, noise)
    triggered = torch.where(torch.rand(n, generator=g) < 0.5, torch.full((n,), 2), clean)
    return labels, clean, triggered


def asr_loop(triggered, labels, target, clean=None):
    hits = total = 0
    for i in range(len(labels)):
        if int(labels[i]) == target:
            continue
        if clean is not None and int(clean[i]) != int(labels[i]):
            continue
        total += 1
        hits += int(triggered[i]) == target
    return hits / total if total else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_and_asr_vs_loops(seed):
    labels, clean, triggered = random_preds(seed)
    acc = sum(int(clean[i]) == int(labels[i]) for i in range(len(labels))) / len(labels)
    assert clean_accuracy(clean, labels) == pytest.approx(acc, abs=1e-12)
    logits = torch.nn.functional.one_hot(clean, 4).float() + 0.1 * torch.rand(len(clean), 4)
    assert clean_accuracy(logits, labels) == pytest.approx(acc, abs=1e-12)  # [N, C] -> argmax
    for target in range(4):
        assert attack_success_rate(triggered, labels, target) == pytest.approx(
            asr_loop(triggered, labels, target), abs=1e-12)
        assert attack_success_rate(triggered, labels, target, clean_preds=clean) == pytest.approx(
            asr_loop(triggered, labels, target, clean), abs=1e-12)
    conditioned = attack_success_rate(triggered, labels, 2, clean)
    assert 0.0 <= conditioned <= 1.0 and conditioned != attack_success_rate(triggered, labels, 2)


def test_asr_edge_cases():
    labels = torch.tensor([3, 3, 3])
    # Empty denominator.
    assert attack_success_rate(torch.tensor([3, 3, 3]), labels, target=3) == 0.0
    labels = torch.tensor([0, 1, 3])
    clean = torch.tensor([1, 0, 3])  # no non-target image correct: conditioned denominator empty
    assert attack_success_rate(torch.tensor([3, 3, 3]), labels, 3, clean) == 0.0
    assert attack_success_rate(torch.tensor([3, 3, 3]), labels, 3) == 1.0
    nothing = torch.tensor([], dtype=torch.long)
    assert clean_accuracy(nothing, nothing) == 0.0
    with pytest.raises(ConfigError):
        clean_accuracy(torch.tensor([1, 2]), torch.tensor([1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_metric_classes_equal_functions_over_chunks(seed):
    labels, clean, triggered = random_preds(seed, n=157)
    acc, asr = CleanAccuracy(), AttackSuccessRate(target=2)
    asr_c = AttackSuccessRate(2, conditioned=True)
    for chunk in torch.arange(157).split(40):
        acc.update(clean[chunk], labels[chunk])
        # clean_preds are ignored when unconditioned.
        asr.update(triggered[chunk], labels[chunk], clean[chunk])
        asr_c.update(triggered[chunk], labels[chunk], clean[chunk])
    assert float(acc.compute()) == pytest.approx(clean_accuracy(clean, labels), abs=1e-6)
    expected = attack_success_rate(triggered, labels, 2)
    assert float(asr.compute()) == pytest.approx(expected, abs=1e-6)
    assert float(asr_c.compute()) == pytest.approx(
        attack_success_rate(triggered, labels, 2, clean), abs=1e-6)
    assert asr_c.hits.dtype == torch.long and asr_c._reductions["hits"] is not None
    with pytest.raises(ConfigError):
        asr_c.update(triggered, labels)
    empty = AttackSuccessRate(target=0)
    with pytest.warns(UserWarning):  # torchmetrics warns about compute() before update()
        assert float(empty.compute()) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auroc_matches_sklearn_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n = 120
    poison = torch.rand(n, generator=g) < 0.2
    # Rounded scores create many ties, between and within the two classes.
    scores = (torch.randn(n, generator=g) + 1.0 * poison).mul(2).round()
    expected = roc_auc_score(poison.numpy(), scores.numpy())
    assert auroc(scores, poison) == pytest.approx(expected, abs=1e-12)
    # Brute-force Mann-Whitney pair count.
    pos, neg = scores[poison], scores[~poison]
    pairs = sum((float(p > q) + 0.5 * float(p == q)) for p in pos for q in neg)
    assert auroc(scores, poison) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    assert math.isnan(auroc(scores, torch.zeros(n, dtype=torch.bool)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detection_metrics_vs_loops(seed):
    g = torch.Generator().manual_seed(seed)
    n = 90
    poison = torch.rand(n, generator=g) < 0.15
    scores = torch.rand(n, generator=g) + 0.4 * poison
    keep = scores < scores.quantile(0.8)
    out = detection_metrics(scores, poison, keep)
    tp = sum(1 for i in range(n) if not keep[i] and poison[i])
    fp = sum(1 for i in range(n) if not keep[i] and not poison[i])
    flagged = tp + fp
    assert out["auroc"] == pytest.approx(roc_auc_score(poison.numpy(), scores.numpy()), abs=1e-12)
    assert out["precision"] == pytest.approx(tp / flagged)
    assert out["recall"] == pytest.approx(tp / int(poison.sum()))
    assert out["fpr"] == pytest.approx(fp / int((~poison).sum()))
    assert out["num_flagged"] == flagged and out["num_poison"] == int(poison.sum())
    assert out["num_samples"] == n
    nothing = detection_metrics(scores, poison, torch.ones(n, dtype=torch.bool))
    assert nothing["precision"] == 0.0 and nothing["recall"] == 0.0 and nothing["num_flagged"] == 0
    no_keep = detection_metrics(scores, poison)
    assert no_keep["precision"] is None and no_keep["num_flagged"] is None
    with pytest.raises(ConfigError):
        detection_metrics(scores, poison, keep.long())
