"""Every loss against a per-sample loop reference written with elementary operations."""

import math

import pytest
import torch

from lightning_ssl_backdoor import losses as L
from lightning_ssl_backdoor.errors import ConfigError

SEEDS = [0, 1, 2]


def softmax_row(v):
    e = [math.exp(float(a) - max(float(b) for b in v)) for a in v]
    s = sum(e)
    return [a / s for a in e]


def ce_row(logit_row, y):
    return -math.log(softmax_row(logit_row)[y])


def close(a, b, tol=1e-9):
    a = float(a.detach()) if torch.is_tensor(a) else float(a)
    b = float(b.detach()) if torch.is_tensor(b) else float(b)
    assert abs(a - b) <= tol * max(1.0, abs(b)), (a, b)


def mid_threshold(logits):
    """A threshold halfway between two sorted max-probabilities (no sample sits on it)."""
    m = torch.softmax(logits, 1).max(1).values.sort().values
    k = m.numel() // 2
    return float(m[k - 1] + m[k]) / 2


def rand_logits(seed, b=9, c=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g, dtype=torch.float64) * scale


# ---------------------------------------------------------------- FixMatch / pseudo-labels


def fixmatch_ref(weak, strong, threshold):
    total = 0.0
    for b in range(weak.shape[0]):
        p = softmax_row(weak[b])
        k = max(range(len(p)), key=lambda j: p[j])
        if p[k] >= threshold:
            total += ce_row(strong[b], k)
    return total / weak.shape[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_fixmatch_loss_and_pseudo_labels(seed):
    weak, strong = rand_logits(seed), rand_logits(seed + 100)
    probs = torch.softmax(weak, 1)
    thr = mid_threshold(weak)  # about half the samples pass
    for threshold in (thr, 0.0, 1.01):  # partial, none masked out, all masked out
        weak_g = weak.clone().requires_grad_(True)
        strong_g = strong.clone().requires_grad_(True)
        loss = L.fixmatch_unlabeled_loss(weak_g, strong_g, threshold)
        close(loss, fixmatch_ref(weak, strong, threshold))
        loss.backward()
        assert weak_g.grad is None or torch.all(weak_g.grad == 0)
        if threshold > 1:
            assert float(loss.detach()) == 0.0 and torch.all(strong_g.grad == 0)
    labels, mask, max_prob = L.fixmatch_pseudo_labels(weak, thr)
    assert mask.dtype == torch.bool
    for b in range(weak.shape[0]):
        p = softmax_row(weak[b])
        assert int(labels[b]) == max(range(len(p)), key=lambda j: p[j])
        close(max_prob[b], max(p))
        assert bool(mask[b]) == (max(p) >= thr)


@pytest.mark.parametrize("seed", SEEDS)
def test_pseudo_label_loss(seed):
    logits = rand_logits(seed)
    thr = mid_threshold(logits)
    for threshold in (thr, 0.0, 1.01):
        x = logits.clone().requires_grad_(True)
        loss = L.pseudo_label_loss(x, threshold)
        close(loss, fixmatch_ref(logits, logits, threshold))
        loss.backward()  # gradient flows only through the CE term, labels are constants
        ref_grad = torch.zeros_like(logits)
        for b in range(logits.shape[0]):
            p = softmax_row(logits[b])
            k = max(range(len(p)), key=lambda j: p[j])
            if p[k] >= threshold:
                for j in range(len(p)):
                    ref_grad[b, j] = (p[j] - (j == k)) / logits.shape[0]
        torch.testing.assert_close(x.grad, ref_grad)


# ---------------------------------------------------------------- consistency losses


@pytest.mark.parametrize("seed", SEEDS)
def test_softmax_mse_kl_entropy(seed):
    a, b = rand_logits(seed), rand_logits(seed + 7)
    B, C = a.shape
    mse = sum(
        (softmax_row(a[i])[k] - softmax_row(b[i])[k]) ** 2 for i in range(B) for k in range(C)
    )
    close(L.softmax_mse_loss(a, b), mse / (B * C))
    probs_b = torch.softmax(b, 1)
    close(L.softmax_mse_loss(a, probs_b, target_is_probs=True), mse / (B * C))
    kl = 0.0
    ent = 0.0
    for i in range(B):
        p, q = softmax_row(b[i]), softmax_row(a[i])
        kl += sum(p[k] * (math.log(p[k]) - math.log(q[k])) for k in range(C))
        ent += -sum(q[k] * math.log(q[k]) for k in range(C))
    close(L.kl_div_from_logits(b, a), kl / B)
    close(L.entropy_loss(a), ent / B)
    # Targets are detached.
    ag, bg = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    (L.softmax_mse_loss(ag, bg) + L.kl_div_from_logits(bg, ag)).backward()
    assert bg.grad is None and ag.grad.abs().sum() > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_uda_loss(seed):
    weak, strong = rand_logits(seed), rand_logits(seed + 3)
    B, C = weak.shape
    thr = mid_threshold(weak)
    for threshold in (thr, 0.0, 1.01):
        total = 0.0
        for i in range(B):
            if max(softmax_row(weak[i])) >= threshold:
                t = softmax_row([float(v) / 0.4 for v in weak[i]])
                q = softmax_row(strong[i])
                total += sum(t[k] * (math.log(t[k]) - math.log(q[k])) for k in range(C))
        wg = weak.clone().requires_grad_(True)
        loss = L.uda_unlabeled_loss(wg, strong, temperature=0.4, threshold=threshold)
        close(loss, total / B)
        if loss.requires_grad:
            loss.backward()
        assert wg.grad is None or torch.all(wg.grad == 0)


def test_tsa_threshold_and_mask():
    K = 10
    end = {"linear": 1.0, "log": (1 - math.exp(-5)) * (1 - 1 / K) + 1 / K, "exp": 1.0}
    for schedule in ("linear", "log", "exp"):
        close(L.tsa_threshold(schedule, 1000, 1000, K), end[schedule])
        close(L.tsa_threshold(schedule, 5000, 1000, K), end[schedule])  # clipped after the end
    close(L.tsa_threshold("linear", 0, 1000, K), 1 / K)
    close(L.tsa_threshold("log", 0, 1000, K), 1 / K)
    close(L.tsa_threshold("exp", 0, 1000, K), math.exp(-5) * (1 - 1 / K) + 1 / K)
    close(L.tsa_threshold("linear", 250, 1000, K), 0.25 * 0.9 + 0.1)
    close(L.tsa_threshold("log", 500, 1000, K), (1 - math.exp(-2.5)) * 0.9 + 0.1)
    close(L.tsa_threshold("exp", 500, 1000, K), math.exp(-2.5) * 0.9 + 0.1)
    with pytest.raises(ConfigError):
        L.tsa_threshold("cubic", 0, 10, K)
    logits = rand_logits(4, b=12)
    targets = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(4))
    keep = L.tsa_mask(logits, targets, 0.3)
    assert keep.dtype == torch.bool
    for i in range(12):
        assert bool(keep[i]) == (softmax_row(logits[i])[int(targets[i])] < 0.3)


# ---------------------------------------------------------------- MixMatch


@pytest.mark.parametrize("seed", SEEDS)
def test_sharpen_and_mixmatch_loss(seed):
    probs = torch.softmax(rand_logits(seed), 1)
    for T in (0.5, 1.0, 0.01):
        out = L.sharpen(probs, T)
        for i in range(probs.shape[0]):
            powered = [float(p) ** (1 / T) for p in probs[i]]
            s = sum(powered)
            for k in range(probs.shape[1]):
                close(out[i, k], powered[k] / s, 1e-7)
    assert torch.isfinite(L.sharpen(probs, 1e-3)).all()  # no 0/0 at tiny temperatures
    targets = torch.softmax(rand_logits(seed + 1), 1)
    B, C = probs.shape
    ref = sum((float(probs[i, k]) - float(targets[i, k])) ** 2 for i in range(B) for k in range(C))
    close(L.mixmatch_unlabeled_loss(probs, targets), ref / (B * C))


@pytest.mark.parametrize("seed", SEEDS)
def test_mixup_pairing(seed):
    x = torch.rand(6, 2, 3, 3, dtype=torch.float64)
    y = torch.softmax(rand_logits(seed, b=6), 1)
    xm, ym, lam, perm = L.mixup(x, y, 0.75, generator=torch.Generator().manual_seed(seed))
    assert 0.5 <= lam <= 1.0
    assert sorted(perm.tolist()) == list(range(6))
    for i in range(6):
        j = int(perm[i])
        torch.testing.assert_close(xm[i], lam * x[i] + (1 - lam) * x[j])
        torch.testing.assert_close(ym[i], lam * y[i] + (1 - lam) * y[j])
    again = L.mixup(x, y, 0.75, generator=torch.Generator().manual_seed(seed))
    assert again[2] == lam and torch.equal(again[3], perm)
    lams = [
        L.mixup(x, y, 1.0, torch.Generator().manual_seed(s), keep_larger=False)[2]
        for s in range(40)
    ]
    assert min(lams) < 0.5 < max(lams)
    with pytest.raises(ConfigError):
        L.mixup(x, torch.zeros(6, dtype=torch.long), 0.75)


# ---------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_vs_double_loop(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    N, D = 5, 4
    z1 = torch.randn(N, D, generator=g, dtype=torch.float64)
    z2 = torch.randn(N, D, generator=g, dtype=torch.float64)
    z = [v for v in z1] + [v for v in z2]

    def cos(a, b):
        return float((a * b).sum() / (a.norm() * b.norm()))

    total = 0.0
    for i in range(2 * N):
        pos = i + N if i < N else i - N
        denom = 0.0
        for k in range(2 * N):
            if k != i:
                denom += math.exp(cos(z[i], z[k]) / temperature)
        total += -math.log(math.exp(cos(z[i], z[pos]) / temperature) / denom)
    close(L.nt_xent_loss(z1, z2, temperature), total / (2 * N))
    close(L.nt_xent_loss(3 * z1, z2, temperature), total / (2 * N))  # cosine: scale-free
    close(L.nt_xent_loss(z2, z1, temperature), total / (2 * N))  # symmetric


# ---------------------------------------------------------------- noise-robust losses


@pytest.mark.parametrize("seed", SEEDS)
def test_symmetric_gce_apl(seed):
    logits = rand_logits(seed, b=8, c=4, scale=6.0)
    targets = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(seed))
    sce, gce, apl = [], [], []
    for i in range(8):
        p = softmax_row(logits[i])
        y = int(targets[i])
        ce = -math.log(p[y])
        rce = -sum(p[k] * math.log(1.0 if k == y else 1e-4) for k in range(4))
        sce.append(0.1 * ce + 1.0 * rce)
        gce.append((1 - p[y] ** 0.7) / 0.7)
        nce = math.log(p[y]) / sum(math.log(pk) for pk in p)
        apl.append(2.0 * nce + 0.5 * rce)
    per = L.symmetric_cross_entropy(logits, targets, reduction="none")
    assert per.shape == (8,)
    for i in range(8):
        close(per[i], sce[i])
    close(L.symmetric_cross_entropy(logits, targets), sum(sce) / 8)
    close(L.symmetric_cross_entropy(logits, targets, reduction="sum"), sum(sce))
    close(L.generalized_cross_entropy(logits, targets, q=0.7), sum(gce) / 8)
    per_apl = L.active_passive_loss(logits, targets, alpha=2.0, beta=0.5, reduction="none")
    for i in range(8):
        close(per_apl[i], apl[i])
    with pytest.raises(ConfigError):
        L.symmetric_cross_entropy(logits, targets, reduction="avg")


def test_sce_clamp_behaviour():
    # RCE = -log(1e-4) * (1 - p_y): 0 for a perfect prediction, at most 9.21 for a wrong one.
    perfect = torch.tensor([[100.0, -100.0, -100.0]], dtype=torch.float64)
    y = torch.tensor([0])
    close(L.symmetric_cross_entropy(perfect, y, alpha=0.0, beta=1.0), 0.0)
    wrong = L.symmetric_cross_entropy(perfect, torch.tensor([1]), alpha=0.0, beta=1.0)
    close(wrong, -math.log(1e-4))
    assert torch.isfinite(wrong)


# ---------------------------------------------------------------- complementary loss


@pytest.mark.parametrize("seed", SEEDS)
def test_complementary_loss_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, C = 7, 4
    logits = torch.randn(B, C, generator=g, dtype=torch.float64) * 2
    transition = torch.rand(C, C, generator=g, dtype=torch.float64)
    transition.fill_diagonal_(0.0)
    transition[:, 1] = 0.0  # a zero column makes q_1 = 0: exercises the epsilon clamp
    mask = torch.rand(B, C, generator=g) < 0.4
    total, count = 0.0, 0
    for b in range(B):
        p = softmax_row(logits[b])
        for j in range(C):
            if mask[b, j]:
                q = sum(p[i] * float(transition[i, j]) for i in range(C))
                total += math.log(max(q, 1e-12))
                count += 1
    close(L.complementary_loss(logits, mask, transition), -total / max(1, count))
    empty = torch.zeros(B, C, dtype=torch.bool)
    close(L.complementary_loss(logits, empty, transition), 0.0)
    with pytest.raises(ConfigError):
        L.complementary_loss(logits, mask.long(), transition)
    with pytest.raises(ConfigError):
        L.complementary_loss(logits, mask, transition[:3])


# ---------------------------------------------------------------- schedules


def test_rampups():
    for step, length in [(0, 10), (3, 10), (10, 10), (15, 10), (-2, 10)]:
        t = min(max(step / length, 0.0), 1.0)
        close(L.linear_rampup(step, length), t)
        close(L.sigmoid_rampup(step, length), math.exp(-5 * (1 - t) ** 2))
        close(L.cosine_rampdown(step, length), 0.5 * (math.cos(math.pi * t) + 1))
        for f in (L.linear_rampup, L.sigmoid_rampup, L.cosine_rampdown):
            assert isinstance(f(step, length), float) and 0.0 <= f(step, length) <= 1.0
    assert L.linear_rampup(5, 0) == 1.0 and L.sigmoid_rampup(5, 0) == 1.0
