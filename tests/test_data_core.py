"""ImageSet, splits, artifacts and the batch streams."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightning_ssl_backdoor.data import ImageSet, PoisonedSplit, make_split, quantize
from lightning_ssl_backdoor.data.artifacts import atomic_write, load_arrays, save_arrays
from lightning_ssl_backdoor.data.streams import EpochPermutationIndex, EvalStream, SSLTrainStream
from lightning_ssl_backdoor.errors import ArtifactError, ConfigError, DataFormatError


def test_imageset_validation_and_views(tiny_sets):
    train, _ = tiny_sets
    assert train.images.dtype == torch.uint8 and len(train) == 60 and train.num_classes == 3
    with pytest.raises(DataFormatError, match="uint8"):
        ImageSet(torch.rand(2, 3, 4, 4), torch.zeros(2), ["a"])
    with pytest.raises(DataFormatError, match="labels"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3), ["a"])
    with pytest.raises(DataFormatError, match="out of range"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 5]), ["a", "b"])
    u = train.unlabeled()
    assert (u.labels == -1).all() and torch.equal(u.true_labels, train.labels)
    sub = train.subset([3, 1])
    assert torch.equal(sub.images[0], train.images[3]) and sub.labels.tolist() == [0, 1]
    assert torch.allclose(train.float() * 255, train.images.float())


def test_quantize_clips_and_rounds():
    x = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.49 / 255, 0.999, 1.7])
    assert quantize(x).tolist() == [0, 0, 0, 1, 255, 255]


def test_make_split_balanced_seeded_disjoint(tiny_sets):
    train, test = tiny_sets
    s = make_split(train, test, num_labeled=7, seed=3)
    counts = torch.bincount(s.labeled.labels, minlength=3).tolist()
    assert sorted(counts) == [2, 2, 3] and len(s.labeled) == 7
    assert len(s.unlabeled) == 53 and (s.unlabeled.labels == -1).all()
    assert set(s.labeled_indices.tolist()).isdisjoint(s.unlabeled_indices.tolist())
    assert torch.equal(s.unlabeled.true_labels, train.labels[s.unlabeled_indices])
    s2 = make_split(train, test, num_labeled=7, seed=3)
    assert torch.equal(s.labeled_indices, s2.labeled_indices)
    s3 = make_split(train, test, num_labeled=7, seed=4)
    assert not torch.equal(s.labeled_indices, s3.labeled_indices)
    s4 = make_split(train, test, labels_per_class=4, include_labeled_in_unlabeled=True, seed=0)
    assert len(s4.labeled) == 12 and len(s4.unlabeled) == 60
    s5 = make_split(train, test, labels_per_class=2, num_unlabeled=10, seed=0)
    assert len(s5.unlabeled) == 10
    with pytest.raises(ConfigError, match="exactly one"):
        make_split(train, test, seed=0)
    with pytest.raises(ConfigError, match="smaller than the number of classes"):
        make_split(train, test, num_labeled=2)
    with pytest.raises(ConfigError, match="has 20 images"):
        make_split(train, test, labels_per_class=21)


def test_poisoned_split_checks(tiny_sets):
    train, test = tiny_sets
    s = make_split(train, test, labels_per_class=2, seed=0)
    p = PoisonedSplit(**vars(s), target=1)
    assert p.unlabeled_poison_mask.dtype == torch.bool and not p.unlabeled_poison_mask.any()
    with pytest.raises(ConfigError, match="target"):
        PoisonedSplit(**vars(s), target=7)
    with pytest.raises(ConfigError, match="one entry per unlabeled"):
        PoisonedSplit(**vars(s), unlabeled_poison_mask=torch.zeros(3, dtype=torch.bool))


def test_artifact_roundtrip_and_tamper(tmp_path):
    arrays = {"x": np.arange(12, dtype=np.uint8).reshape(3, 4), "m": np.array([True, False])}
    p = save_arrays(tmp_path / "a.npz", arrays, {"seed": 3})
    back, meta = load_arrays(p)
    assert meta == {"seed": 3} and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    # tampered array (valid npz, different content)
    np.savez_compressed(tmp_path / "a.npz", x=arrays["x"] + 1, m=arrays["m"])
    with pytest.raises(ArtifactError, match="sha256"):
        load_arrays(p)
    # tampered manifest
    save_arrays(p, arrays, {"seed": 3})
    man = json.loads((tmp_path / "a.json").read_text())
    man["arrays"]["x"]["sha256"] = "0" * 64
    (tmp_path / "a.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError):
        load_arrays(p)
    with pytest.raises(ArtifactError, match="incomplete"):
        load_arrays(tmp_path / "missing.npz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def boom(fh):
        fh.write(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_epoch_permutation_random_access():
    idx = EpochPermutationIndex(7, seed=5)
    seq = idx.take(0, 30)
    for e in range(4):  # each epoch is a permutation
        assert sorted(seq[7 * e : 7 * e + 7].tolist()) == list(range(7))
    fresh = EpochPermutationIndex(7, seed=5)
    assert torch.equal(fresh.take(12, 9), seq[12:21])


def test_train_stream_shapes_ratio_and_resume(tiny_sets):
    train, test = tiny_sets
    s = make_split(train, test, labels_per_class=2, seed=0)
    stream = SSLTrainStream(s.labeled, s.unlabeled, batch_size=4, mu=3, seed=1)
    it = iter(stream)
    batches = [next(it) for _ in range(5)]
    b = batches[0]
    assert b["labeled"]["x"].shape == (4, 3, 8, 8) and b["labeled"]["x"].dtype == torch.uint8
    assert b["unlabeled"]["x"].shape == (12, 3, 8, 8) and set(b["unlabeled"]) == {"x", "idx"}
    assert torch.equal(b["labeled"]["x"], s.labeled.images[b["labeled"]["idx"]])
    assert torch.equal(b["labeled"]["y"], s.labeled.labels[b["labeled"]["idx"]])
    resumed = next(iter(SSLTrainStream(s.labeled, s.unlabeled, 4, 3, seed=1, start_step=3)))
    assert torch.equal(resumed["unlabeled"]["idx"], batches[3]["unlabeled"]["idx"])
    assert torch.equal(resumed["labeled"]["idx"], batches[3]["labeled"]["idx"])


def test_eval_stream_shards_without_padding(monkeypatch, tiny_sets):
    _, test = tiny_sets
    import lightning_ssl_backdoor.data.streams as streams

    seen = []
    for rank in range(3):
        monkeypatch.setattr(streams, "_rank_world", lambda r=rank: (r, 3))
        es = EvalStream(test.images, test.labels, batch_size=4, triggered=test.images.flip(-1))
        batches = list(es)
        assert len(batches) == len(es)
        for b in batches:
            assert torch.equal(b["x_trig"], test.images[b["idx"]].flip(-1))
            seen += b["idx"].tolist()
    assert sorted(seen) == list(range(len(test)))
