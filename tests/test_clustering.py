"""Pixel-space agglomerative clustering detector (Carlini 2021, Sec. 5.2)."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.defenses import cluster_detect
from lightning_ssl_backdoor.defenses.clustering import single_linkage_heights
from lightning_ssl_backdoor.errors import ConfigError


def interpolation_chain(n, shape, gen):
    """``n`` uint8 images on the straight line between two random images (neither endpoint kept)."""
    start, end = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    alpha = torch.linspace(0, 1, n + 2)[1:-1].view(-1, 1, 1, 1)
    return ((1 - alpha) * start + alpha * end).mul(255).round().to(torch.uint8)


def poisoned_set(n_clean=400, n_chain=20, shape=(3, 16, 16), seed=0, chains=1):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 256, (n_clean, *shape), generator=gen, dtype=torch.uint8)
    parts = [clean] + [interpolation_chain(n_chain if c == 0 else n_chain // 2, shape, gen)
                       for c in range(chains)]
    images = torch.cat(parts)
    perm = torch.randperm(images.shape[0], generator=gen)
    mask = torch.zeros(images.shape[0], dtype=torch.bool)
    mask[n_clean:] = True
    return images[perm], mask[perm], perm


def test_flags_the_interpolation_chain():
    images, mask, _ = poisoned_set()
    result = cluster_detect(images, n_neighbors=10, pca_dim=32)
    flagged = result.flagged
    recall = float(flagged[mask].float().mean())
    fpr = float(flagged[~mask].float().mean())
    assert recall >= 0.95 and fpr < 0.01, (recall, fpr)
    assert roc_auc_score(mask.numpy(), result.scores.numpy()) == 1.0
    assert result.info["flagged_cluster_sizes"] == [20]
    assert result.scores.dtype == torch.float64 and result.keep_mask.dtype == torch.bool


def test_deterministic_and_imageset_and_features_agree():
    images, mask, _ = poisoned_set(n_clean=150, seed=1)
    a = cluster_detect(images, pca_dim=16)
    b = cluster_detect(ImageSet(images=images, labels=torch.full((images.shape[0],), -1)), pca_dim=16)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.keep_mask, b.keep_mask)
    # the same vectors given as features (no PCA) give the same chain
    feats = images.reshape(images.shape[0], -1).float() / 255
    c = cluster_detect(features=feats, pca_dim=None)
    assert torch.equal(c.flagged, mask) and torch.equal(a.flagged, mask)


def test_largest_only_versus_all_clusters():
    images, mask, perm = poisoned_set(n_clean=200, n_chain=16, chains=2, seed=2)
    # chain one: original rows 200..215 (16 images); chain two: rows 216..223 (8 images)
    first = torch.zeros_like(mask)
    first[(perm >= 200) & (perm < 216)] = True
    largest = cluster_detect(images, pca_dim=24)
    both = cluster_detect(images, pca_dim=24, largest_only=False)
    assert torch.equal(largest.flagged, first)
    assert torch.equal(both.flagged, mask)
    assert both.info["flagged_cluster_sizes"] == [16, 8]


def test_tiny_inputs():
    gen = torch.Generator().manual_seed(3)
    two = torch.randint(0, 256, (2, 1, 4, 4), generator=gen, dtype=torch.uint8)
    result = cluster_detect(two)
    assert result.scores.shape == (2,) and bool(result.keep_mask.all())
    chain = interpolation_chain(6, (1, 4, 4), gen)
    images = torch.cat([torch.randint(0, 256, (3, 1, 4, 4), generator=gen, dtype=torch.uint8), chain])
    result = cluster_detect(images, n_neighbors=3, min_cluster_size=4, threshold=20 / 255 * 4)
    assert result.flagged.tolist() == [False] * 3 + [True] * 6


def brute_force_heights(points, m):
    """Smallest threshold t at which each point's component of {pairs with distance <= t} has >= m
    points, trying every pairwise distance in increasing order."""
    n = len(points)
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    heights = np.full(n, np.inf)
    for t in np.unique(dist[np.triu_indices(n, 1)]):
        adj = dist <= t
        for i in range(n):
            if np.isfinite(heights[i]):
                continue
            seen, stack = {i}, [i]
            while stack:
                v = stack.pop()
                for w in np.nonzero(adj[v])[0]:
                    if w not in seen:
                        seen.add(w)
                        stack.append(w)
            if len(seen) >= m:
                heights[i] = t
    return heights


@pytest.mark.parametrize("m", [2, 3, 7])
def test_merge_heights_match_brute_force_single_linkage(m):
    rng = np.random.default_rng(m)
    points = np.concatenate([rng.normal(size=(15, 3)), rng.normal(size=(10, 3)) * 0.1 + 4])
    n = len(points)
    pairs = np.array(list(itertools.combinations(range(n), 2)))
    weights = np.sqrt(((points[pairs[:, 0]] - points[pairs[:, 1]]) ** 2).sum(-1))
    _, heights = single_linkage_heights(n, pairs[:, 0], pairs[:, 1], weights, m)
    np.testing.assert_allclose(heights, brute_force_heights(points, m), rtol=1e-9)
    # an isolated pair never reaches 3 members
    _, h = single_linkage_heights(4, np.array([0, 2]), np.array([1, 3]), np.array([1.0, 0.0]), 3)
    assert np.isinf(h).all()


def test_exact_duplicates_are_merged_at_height_zero():
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (40, 3, 8, 8), generator=gen, dtype=torch.uint8)
    images[10:15] = images[3]
    result = cluster_detect(images, min_cluster_size=6)
    assert result.flagged.nonzero().squeeze(1).tolist() == [3, 10, 11, 12, 13, 14]
    assert result.info["merge_heights"][[3, 10]].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"images": torch.rand(5, 3, 4, 4)},  # float pixels
        {"images": torch.zeros(5, 4, 4, dtype=torch.uint8)},  # not N x C x H x W
        {"images": torch.zeros(1, 3, 4, 4, dtype=torch.uint8)},
        {"images": torch.zeros(5, 3, 4, 4, dtype=torch.uint8), "n_neighbors": 0},
        {"images": torch.zeros(5, 3, 4, 4, dtype=torch.uint8), "min_cluster_size": 1},
        {"images": torch.zeros(5, 3, 4, 4, dtype=torch.uint8), "threshold": -1.0},
        {"images": torch.zeros(5, 3, 4, 4, dtype=torch.uint8), "features": torch.zeros(4, 2)},
        {},
    ],
)
def test_bad_input_raises_config_error(kwargs):
    with pytest.raises(ConfigError):
        cluster_detect(**kwargs)
