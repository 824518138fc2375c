"""CIFAR-10 as users have it: official archives, packed image folders, the decode cache, subsets."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_ssl_backdoor.data.cache import cached_load, source_fingerprint
from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.readers import load_dataset
from lightning_ssl_backdoor.data.subset import subset_split
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError

from tests.test_readers import C10_NAMES, _write_cifar10_bin, _write_cifar10_py


def _tar_folder(src: Path, archive: Path, arcroot: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcroot or src.name)
    return archive


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_official_cifar10_archives_read_without_extraction(tmp_path, kind):
    src = tmp_path / "src"
    if kind == "binary":
        truth = _write_cifar10_bin(src, per_batch=2, n_test=3)
        folder, name = src / "cifar-10-batches-bin", "cifar-10-binary.tar.gz"
    else:
        truth = _write_cifar10_py(src, protocol=2, bytes_keys=True)
        folder, name = src / "cifar-10-batches-py", "cifar-10-python.tar.gz"
    root = tmp_path / "dl"
    root.mkdir()
    _tar_folder(folder, root / name)
    for where in (root, root / name):  # the folder holding the archive, or the archive itself
        for split in ("train", "test"):
            data = load_dataset("cifar10", split, root=where, cache=False)
            assert data.classes == C10_NAMES
            assert np.array_equal(data.images.numpy(), truth[split][0])
            assert np.array_equal(data.labels.numpy(), np.asarray(truth[split][1]))


def _write_folder_tree(root: Path, split: str, per_class: int, size: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for c in ("cat", "airplane", "truck"):
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:04d}.png")
            out[(c, i)] = arr
    return out


def test_packed_image_folders_and_plain_tree_agree(tmp_path):
    tree = tmp_path / "tree" / "cifar10"
    truth = {s: _write_folder_tree(tree, s, 2 if s == "test" else 3, seed=i) for i, s in enumerate(("train", "test"))}
    packed = tmp_path / "packed"
    packed.mkdir()
    for split in ("train", "test"):
        with tarfile.open(packed / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(tree / split, arcname=f"cifar10/{split}")
    for split in ("train", "test"):
        plain = load_dataset("cifar10", split, root=tmp_path / "tree", cache=False)
        arch = load_dataset("cifar10", split, root=packed, cache=False)
        assert plain.classes == arch.classes == ["airplane", "cat", "truck"]
        assert torch.equal(plain.images, arch.images) and torch.equal(plain.labels, arch.labels)
        first = truth[split][("airplane", 0)]
        assert np.array_equal(arch.images[0].permute(1, 2, 0).numpy(), first)
    resized = load_dataset("cifar10", "train", root=packed, image_size=4, cache=False)
    assert resized.images.shape == (9, 3, 4, 4)


def test_a_broken_extracted_release_is_reported_not_skipped(tmp_path):
    _write_cifar10_bin(tmp_path, per_batch=2, n_test=3)
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin"
    batch.write_bytes(batch.read_bytes()[:-7])
    with pytest.raises(DataFormatError, match="data_batch_1.bin"):
        load_dataset("cifar10", "train", root=tmp_path, cache=False)


def test_no_cifar_data_is_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no cifar10 data for split 'train'"):
        load_dataset("cifar10", "train", root=tmp_path / "empty", cache=False)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_dataset("cifar10", "train", root=tmp_path / "missing")


def test_decode_cache_hits_and_rebuilds_when_tampered_or_sources_change(tmp_path):
    root = tmp_path / "data"
    _write_cifar10_bin(root, per_batch=2, n_test=3)
    cache = tmp_path / "cache"
    first = load_dataset("cifar10", "train", root=root, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    calls = []

    def loader():
        calls.append(1)
        return load_dataset("cifar10", "train", root=root, cache=False)

    hit = cached_load(loader, root, cache, dataset="cifar10", split="train", image_size=None, options=[])
    assert not calls and torch.equal(hit.images, first.images) and hit.classes == first.classes
    # tamper with the cached pixels (keeping a valid npz): refused and rebuilt
    with np.load(files[0], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"].copy()
    arrays["images"][0, 0, 0, 0] ^= 0xFF
    np.savez(files[0], **arrays)
    with pytest.warns(UserWarning, match="tampered"):
        again = load_dataset("cifar10", "train", root=root, cache_dir=cache)
    assert torch.equal(again.images, first.images)
    with np.load(files[0], allow_pickle=False) as z:  # the rebuilt file is good again
        assert np.array_equal(z["images"], first.images.numpy())
    # a truncated cache file: rebuilt
    files[0].write_bytes(files[0].read_bytes()[:100])
    with pytest.warns(UserWarning, match="cannot be read"):
        load_dataset("cifar10", "train", root=root, cache_dir=cache)
    # changed source files: the cache is stale
    batch = root / "cifar-10-batches-bin" / "data_batch_1.bin"
    raw = bytearray(batch.read_bytes())
    raw[5] ^= 0xFF
    batch.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="source files changed"):
        changed = load_dataset("cifar10", "train", root=root, cache_dir=cache)
    assert not torch.equal(changed.images, first.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("cifar10", "train", root=root, cache_dir=cache)  # a clean hit warns nothing


def test_source_fingerprint_content_and_stat_modes(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / ".hidden").write_bytes(b"y")
    fp = source_fingerprint(tmp_path)
    assert [f["path"] for f in fp] == ["a"] and "sha256" in fp[0]
    monkeypatch.setattr("lightning_ssl_backdoor.data.cache.CONTENT_HASH_MAX_FILES", 0)
    fp = source_fingerprint(tmp_path)
    assert "mtime_ns" in fp[0] and "sha256" not in fp[0]


def _sets(n_per_class: int = 20, classes: int = 5):
    g = torch.Generator().manual_seed(0)
    n = n_per_class * classes
    imgs = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    names = [f"c{k}" for k in range(classes)]
    train = ImageSet(imgs, torch.arange(n) % classes, names)
    test = ImageSet(imgs[: n // 2].clone(), torch.arange(n // 2) % classes, names)
    return train, test


def test_subset_classes_counts_order_and_seed():
    train, test = _sets()
    sub = {"classes": ["c4", 1, "c2"], "labeled": 3, "unlabeled": 5, "test": 4}
    split = subset_split(train, test, sub, seed=7)
    assert split.classes == ["c4", "c1", "c2"]
    assert torch.equal(torch.bincount(split.labeled.labels), torch.tensor([3, 3, 3]))
    assert torch.equal(torch.bincount(split.unlabeled.true_labels), torch.tensor([5, 5, 5]))
    assert torch.equal(torch.bincount(split.test.labels), torch.tensor([4, 4, 4]))
    # relabelled images are the original class's images
    for new, old in enumerate([4, 1, 2]):
        for img in split.labeled.images[split.labeled.labels == new]:
            orig = (train.images == img).flatten(1).all(1).nonzero().flatten()
            assert int(train.labels[orig[0]]) == old
    again = subset_split(train, test, sub, seed=7)
    other = subset_split(train, test, sub, seed=8)
    assert torch.equal(again.unlabeled.images, split.unlabeled.images)
    assert not torch.equal(other.unlabeled.images, split.unlabeled.images)
    whole = subset_split(train, test, None, seed=0, labels_per_class=2)
    assert len(whole.labeled) == 10


@pytest.mark.parametrize("bad,msg", [
    ({"classes": ["nope", "c1"]}, "not a class"),
    ({"classes": ["c1"]}, "at least two"),
    ({"labeled": 0}, "positive integer"),
    ({"unlabeled": 3}, "needs 'labeled'"),
    ({"labeled": 3, "unlabeled": 30}, "lower it"),
    ({"colour": 1}, "unknown key"),
])
def test_subset_errors_are_one_sentence(bad, msg):
    train, test = _sets()
    with pytest.raises(ConfigError, match=msg):
        subset_split(train, test, bad, seed=0)
