"""Training-dynamics influence (Carlini 2021, Sec. 5.3) against a brute-force double loop."""

import os

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_ssl_backdoor.defenses import (
    DetectionResult,
    chunked_knn,
    influence_detect,
    influence_scores,
    influence_vectors,
    keep_mask_from_scores,
    pair_dots,
    plot_influence_histogram,
)
from lightning_ssl_backdoor.defenses import knn as knn_module
from lightning_ssl_backdoor.errors import ConfigError


def brute_force_scores(history: torch.Tensor, k: int) -> torch.Tensor:
    """The definition, written out with explicit loops over epochs and examples (numpy float64)."""
    h = history.double().numpy()
    n_epochs, n = h.shape[0], h.shape[1]

    def mu(j, a, b):
        parts = [h[e + 1, j] - h[e, j] for e in range(a, b)] + [h[b, j]]
        return np.concatenate(parts)

    src = [mu(i, 0, n_epochs - 2) for i in range(n)]
    dst = np.stack([mu(j, 1, n_epochs - 1) for j in range(n)])
    scores = []
    for i in range(n):
        influence = ((src[i] - dst) ** 2).sum(1).tolist()
        values = sorted(v for j, v in enumerate(influence) if j != i)
        scores.append(sum(values[:k]) / k)
    return torch.tensor(scores, dtype=torch.float64)


def random_history(n_epochs, n, c, seed, temperature=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n_epochs, n, c, generator=g) * temperature, dim=-1)


@pytest.mark.parametrize(
    "n, n_epochs, c, k, chunk",
    [
        (30, 4, 3, 5, None),
        (23, 2, 10, 3, 7),  # K = 2: mu is just the prediction; chunk does not divide N
        (41, 6, 5, 40, 13),  # k = N - 1: every other example counts
        (64, 5, 4, 1, 5),
        (50, 3, 2, 7, 64),  # one block larger than N
    ],
)
def test_matches_brute_force(n, n_epochs, c, k, chunk):
    history = random_history(n_epochs, n, c, seed=n + k)
    got = influence_scores(history, k=k, chunk_size=chunk)
    want = brute_force_scores(history, k)
    assert got.dtype == torch.float64 and got.shape == (n,)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_vectors_follow_the_definition():
    history = random_history(4, 3, 2, seed=1).double()
    a, b = influence_vectors(history)
    f = history[:, 1]
    torch.testing.assert_close(a[1], torch.cat([f[1] - f[0], f[2] - f[1], f[2]]))
    torch.testing.assert_close(b[1], torch.cat([f[2] - f[1], f[3] - f[2], f[3]]))


def test_duplicated_trajectories_take_the_larger_pool_path_and_stay_exact():
    # 20 exact copies of 6 trajectories: the 13-candidate pool cannot hold the 20 tied copies, so
    # no row is proven by the first pass; larger pools and float64 finish the job
    history = random_history(5, 6, 4, seed=3).repeat(1, 20, 1)
    exact = knn_module._Space(*influence_vectors(history))
    _, proven = knn_module._guarded_scores(exact, exact, 5, 13, torch.float32, None,
                                                 torch.arange(120))
    assert not bool(proven.any())
    torch.testing.assert_close(influence_scores(history, k=5, chunk_size=17),
                               brute_force_scores(history, 5), rtol=1e-10, atol=1e-12)


def test_low_dimensional_histories_take_the_subspace_path_and_stay_exact(monkeypatch):
    # smooth trajectories driven by 2 latent directions: a principal subspace proves the neighbours
    g = torch.Generator().manual_seed(13)
    n, n_epochs, c = 300, 12, 10
    latent = torch.cumsum(torch.randn(n_epochs, n, 2, generator=g) * 0.3, 0)
    latent = latent + 2 * torch.randn(1, n, 2, generator=g)
    history = torch.softmax(latent @ torch.randn(2, c, generator=g), -1)
    searched_dims = []
    original = knn_module._guarded_scores

    def spy(exact, space, *args):
        searched_dims.append((space.dim, int(args[-1].numel())))
        return original(exact, space, *args)

    monkeypatch.setattr(knn_module, "_guarded_scores", spy)
    got = influence_scores(history, k=5, chunk_size=64)
    # the pass over all rows searched fewer than (K-1)*C dimensions
    assert any(d < (n_epochs - 1) * c and rows == n for d, rows in searched_dims)
    torch.testing.assert_close(got, brute_force_scores(history, 5), rtol=1e-10, atol=1e-12)


def test_numpy_and_float32_inputs():
    history = random_history(3, 20, 3, seed=4)
    want = brute_force_scores(history, 2)
    torch.testing.assert_close(influence_scores(history.numpy(), k=2), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(influence_scores(history.float(), k=2), want, rtol=1e-6, atol=1e-9)


def test_planted_follower_gets_the_lowest_score():
    history = random_history(8, 40, 5, seed=5)
    leader, follower = 7, 21
    # the follower repeats the leader's prediction changes one epoch later
    history[1:, follower] = history[:-1, leader]
    scores = influence_scores(history, k=1)
    assert int(torch.argmin(scores)) == leader
    assert float(scores[leader]) < 1e-12 < float(scores.sort().values[1])


def plant_poison_group(history, n_poison, seed):
    """Overwrite evenly spaced examples with one shared, slowly drifting trajectory (plus tiny noise):
    each poison's changes are repeated by the others one epoch later, as in Fig. 7."""
    n_epochs, n, c = history.shape
    g = torch.Generator().manual_seed(seed)
    drift = torch.cumsum(torch.randn(n_epochs, c, generator=g) * 0.05, 0)
    logits = torch.randn(c, generator=g) + drift
    base = torch.softmax(logits, -1)
    poison = torch.arange(0, n, n // n_poison)[:n_poison]
    history[:, poison] = base[:, None, :] + 1e-4 * torch.randn(n_epochs, n_poison, c, generator=g)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[poison] = True
    return mask


def test_group_of_mutually_influencing_poisons_is_separated():
    history = random_history(10, 200, 10, seed=6)
    mask = plant_poison_group(history, 8, seed=7)
    result = influence_detect(history, k=5, drop_count=8)
    assert isinstance(result, DetectionResult)
    assert roc_auc_score(mask.numpy(), result.scores.numpy()) == 1.0
    assert torch.equal(result.flagged, mask)
    torch.testing.assert_close(result.scores, -result.info["influence"])


def test_approximate_is_an_upper_bound_close_to_exact():
    history = random_history(12, 300, 10, seed=8)
    mask = plant_poison_group(history, 6, seed=1)
    exact = influence_scores(history, k=5)
    approx = influence_scores(history, k=5, approximate=True, projection_dim=32)
    assert bool((approx >= exact - 1e-12).all())
    assert float(((approx - exact) / exact).median()) < 0.05
    torch.testing.assert_close(approx[mask], exact[mask])  # near-zero influences survive
    assert torch.equal(torch.argsort(approx)[:6].sort().values, mask.nonzero().squeeze(1))


def test_chunked_knn_matches_sorting_all_distances():
    g = torch.Generator().manual_seed(9)
    q = torch.randn(37, 6, generator=g, dtype=torch.float64)
    keys = torch.randn(29, 6, generator=g, dtype=torch.float64)
    exclude = torch.full((37,), -1)
    exclude[:29] = torch.arange(29)
    dist, idx = chunked_knn(q, keys, 4, exclude=exclude, chunk_size=5)
    full = torch.cdist(q, keys).square()
    full[torch.arange(29), torch.arange(29)] = float("inf")
    want = full.sort(dim=1)
    torch.testing.assert_close(dist, want.values[:, :4])
    assert torch.equal(idx, want.indices[:, :4])


@pytest.mark.parametrize("sparse_ok", [True, False])
def test_pair_dots_match_explicit_products(sparse_ok, monkeypatch):
    if not sparse_ok:  # the gather fallback, for builds without sampled_addmm
        def unsupported(*args, **kwargs):
            raise NotImplementedError("no sampled_addmm")

        monkeypatch.setattr(torch.sparse, "sampled_addmm", unsupported)
    g = torch.Generator().manual_seed(12)
    q = torch.randn(11, 5, generator=g, dtype=torch.float64)
    keys = torch.randn(8, 5, generator=g, dtype=torch.float64)
    cand = torch.randint(0, 8, (11, 3), generator=g)
    want = torch.stack([torch.stack([q[i] @ keys[j] for j in cand[i]]) for i in range(11)])
    torch.testing.assert_close(pair_dots(q, keys, cand), want)


@pytest.mark.parametrize(
    "history, k",
    [
        (torch.rand(1, 10, 3), 2),  # a single epoch
        (torch.rand(3, 10, 3), 10),  # k > N - 1
        (torch.rand(3, 10, 3), 0),
        (torch.rand(10, 3), 1),  # not [K, N, C]
        (torch.full((3, 10, 3), float("nan")), 1),
    ],
)
def test_bad_input_raises_config_error(history, k):
    with pytest.raises(ConfigError):
        influence_scores(history, k=k)


def test_bad_chunk_and_criteria_raise():
    history = random_history(3, 10, 3, seed=10)
    with pytest.raises(ConfigError):
        influence_scores(history, k=2, chunk_size=0)
    with pytest.raises(ConfigError):
        influence_detect(history, k=2, drop_fraction=0.1, drop_count=2)


def test_keep_mask_from_scores():
    scores = torch.tensor([0.5, 3.0, 3.0, -1.0, 2.0])
    assert keep_mask_from_scores(scores, drop_count=2).tolist() == [True, False, False, True, True]
    # ties at the cut: the lower index is dropped first
    assert keep_mask_from_scores(scores, drop_count=1).tolist() == [True, False, True, True, True]
    top3 = [True, False, False, True, False]
    assert keep_mask_from_scores(scores, drop_fraction=0.6).tolist() == top3
    assert keep_mask_from_scores(scores, threshold=2.0).tolist() == top3
    assert keep_mask_from_scores(scores, drop_count=0).all()
    for kwargs in ({}, {"drop_count": 1, "threshold": 0.0}, {"drop_count": 6},
                   {"drop_fraction": 1.5}, {"drop_count": 1.5}):
        with pytest.raises(ConfigError):
            keep_mask_from_scores(scores, **kwargs)
    with pytest.raises(ConfigError):
        DetectionResult(scores=scores, keep_mask=torch.ones(4, dtype=torch.bool))


def test_threshold_detection_and_histogram(tmp_path):
    history = random_history(6, 60, 4, seed=11)
    history[1:, 30] = history[:-1, 3]
    result = influence_detect(history, k=1, threshold=1e-9)
    assert result.flagged.nonzero().squeeze(1).tolist() == [3]
    mask = torch.zeros(60, dtype=torch.bool)
    mask[3] = True
    path = tmp_path / "fig" / "influence.png"
    # negated detector scores are accepted as well as the influence values themselves
    out = plot_influence_histogram(result.scores, mask, path)
    assert out == os.fspath(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["influence.png"]  # no temp file left
    with pytest.raises(ConfigError):
        plot_influence_histogram(result.scores, mask[:10], tmp_path / "bad.png")


def brute_force_lag0_scores(history: torch.Tensor, k: int) -> torch.Tensor:
    """The co-movement variant (``lag=0``): mu^(0,K-1) against mu^(0,K-1), explicit loops."""
    h = history.double().numpy()
    n_epochs, n = h.shape[0], h.shape[1]
    mu = np.stack([np.concatenate([h[e + 1, j] - h[e, j] for e in range(n_epochs - 1)] + [h[-1, j]])
                   for j in range(n)])
    scores = []
    for i in range(n):
        d = sorted(float(((mu[i] - mu[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[:k]) / k)
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("n, n_epochs, c, k", [(30, 4, 3, 5), (23, 2, 10, 3), (41, 6, 5, 40)])
def test_lag0_variant_matches_brute_force(n, n_epochs, c, k):
    history = random_history(n_epochs, n, c, seed=7 * n + k)
    got = influence_scores(history, k=k, lag=0)
    torch.testing.assert_close(got, brute_force_lag0_scores(history, k), rtol=1e-10, atol=1e-12)
    # the default is the paper's lagged definition
    torch.testing.assert_close(influence_scores(history, k=k), brute_force_scores(history, k), rtol=1e-10, atol=1e-12)
    assert influence_detect(history, k=k, drop_count=3, lag=0).info["lag"] == 0
    with pytest.raises(ConfigError, match="lag"):
        influence_scores(history, k=k, lag=2)


def test_lag0_finds_poisons_that_change_together():
    """Poisons that all jump in the same record (and benign examples that wander) are closest to each
    other under co-movement; under the one-record lag a synchronous jump does not match itself."""
    g = torch.Generator().manual_seed(0)
    n, p, K, C = 200, 10, 12, 4
    hist = torch.softmax(0.5 * torch.randn(K, n, C, generator=g), dim=-1)
    jump = torch.zeros(K, C)
    jump[:6, 1], jump[6:, 0] = 1.0, 1.0  # class 1 until record 6, class 0 afterwards
    hist[:, -p:] = (0.9 * jump + 0.025).unsqueeze(1) + 1e-3 * torch.rand(K, p, C, generator=g)
    hist = hist / hist.sum(-1, keepdim=True)
    poison = torch.zeros(n, dtype=torch.bool)
    poison[-p:] = True
    s0 = influence_scores(hist, k=5, lag=0)
    assert float(s0[poison].max()) < float(s0[~poison].min())
    s1 = influence_scores(hist, k=5, lag=1)
    assert roc_auc_score(poison.numpy(), (-s0).numpy()) == 1.0
    assert roc_auc_score(poison.numpy(), (-s1).numpy()) <= roc_auc_score(poison.numpy(), (-s0).numpy())


def test_self_influence_and_roughness_match_loops():
    """Influence(u, u) and the pooled / per-example roughness against explicit loops over records."""
    from lightning_ssl_backdoor.defenses.influence import delta_roughness, self_influence

    g = torch.Generator().manual_seed(3)
    h = torch.softmax(torch.randn(7, 9, 4, generator=g, dtype=torch.float64), -1)
    hn = h.numpy()
    k_rec = hn.shape[0]
    ref_self, ref_rough, ref_energy = [], [], []
    for j in range(hn.shape[1]):
        d = [hn[t + 1, j] - hn[t, j] for t in range(k_rec - 1)]
        si = sum(((d[t] - d[t + 1]) ** 2).sum() for t in range(k_rec - 2)) + ((hn[k_rec - 2, j] - hn[k_rec - 1, j]) ** 2).sum()
        ref_self.append(si)
        ref_rough.append(sum(((d[t] - d[t + 1]) ** 2).sum() for t in range(k_rec - 2)))
        ref_energy.append(sum((x ** 2).sum() for x in d))
    torch.testing.assert_close(self_influence(h), torch.tensor(ref_self, dtype=torch.float64))
    torch.testing.assert_close(delta_roughness(h, per_example=True),
                               torch.tensor(ref_rough, dtype=torch.float64) / torch.tensor(ref_energy, dtype=torch.float64))
    assert delta_roughness(h) == pytest.approx(sum(ref_rough) / sum(ref_energy))
    # an exact copy of u_0 is the only example it influences, and it does so by its self-influence
    far = torch.softmax(50 * torch.randn(7, 6, 4, generator=g, dtype=torch.float64), -1)
    dup = torch.cat([h[:, :1], far, h[:, :1]], 1)
    assert brute_force_scores(dup, k=1)[0].item() == pytest.approx(self_influence(h)[0].item())


def test_roughness_tells_smooth_from_noisy_dynamics():
    """A smooth sigmoid trajectory is near 0; white noise around a fixed prediction is near 3."""
    from lightning_ssl_backdoor.defenses.influence import delta_roughness

    t = torch.linspace(-4, 4, 200, dtype=torch.float64)
    p = torch.sigmoid(t)[:, None, None] * torch.ones(1, 5, 1, dtype=torch.float64)
    smooth = torch.cat([p, 1 - p], -1)
    assert delta_roughness(smooth) < 0.01
    g = torch.Generator().manual_seed(0)
    q = (0.5 + 0.05 * torch.randn(4000, 20, 1, generator=g, dtype=torch.float64))
    noisy = torch.cat([q, 1 - q], -1)
    assert delta_roughness(noisy) == pytest.approx(3.0, abs=0.1)
    flat = torch.full((4, 3, 2), 0.5, dtype=torch.float64)
    assert torch.isnan(delta_roughness(flat, per_example=True)).all()
    with pytest.raises(ConfigError):
        delta_roughness(smooth[:2])
