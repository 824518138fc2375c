"""Dataset readers: every format is generated here, tiny, with known pixels and labels."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_ssl_backdoor.data import readers
from lightning_ssl_backdoor.data.readers import (
    DATASET_NAMES,
    RestrictedUnpickler,
    digits_split_indices,
    list_image_files,
    load_dataset,
    read_cifar,
    read_digits,
    read_image_folder,
    read_stl10,
    read_svhn,
    resize_images,
    restricted_load,
)
from lightning_ssl_backdoor.data.readers_common import check_image_size
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError

C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _pixels(n: int, seed: int, side: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, side, side), dtype=np.uint8)


# ---------------------------------------------------------------- CIFAR binary


def _write_cifar10_bin(root: Path, per_batch: int = 2, n_test: int = 3) -> dict:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "batches.meta.txt").write_text("\n".join(C10_NAMES) + "\n\n")
    truth = {"train": ([], []), "test": ([], [])}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        n = n_test if name.startswith("test") else per_batch
        imgs = _pixels(n, seed=i)
        labels = (np.arange(n) + i) % 10
        rows = np.concatenate([labels[:, None].astype(np.uint8), imgs.reshape(n, -1)], axis=1)
        (folder / name).write_bytes(rows.tobytes())
        key = "test" if name.startswith("test") else "train"
        truth[key][0].append(imgs)
        truth[key][1].append(labels)
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in truth.items()}


def test_cifar10_binary_round_trip_from_parent_and_folder(tmp_path):
    truth = _write_cifar10_bin(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-bin"):
        for split in ("train", "test"):
            data = read_cifar(root, split)
            assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
            assert data.images.shape == (len(truth[split][0]), 3, 32, 32)
            assert np.array_equal(data.images.numpy(), truth[split][0])
            assert np.array_equal(data.labels.numpy(), truth[split][1])
            assert data.classes == C10_NAMES
    assert len(read_cifar(tmp_path, "train")) == 10


def test_cifar100_binary_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    names = [f"class_{i:02d}" for i in range(100)]
    (folder / "fine_label_names.txt").write_text("\n".join(names))
    for seed, split in enumerate(("train", "test")):
        imgs = _pixels(3, seed)
        fine = np.array([99, 0, 42], dtype=np.uint8)
        coarse = np.array([1, 2, 3], dtype=np.uint8)
        rows = np.concatenate([coarse[:, None], fine[:, None], imgs.reshape(3, -1)], axis=1)
        (folder / f"{split}.bin").write_bytes(rows.tobytes())
        data = read_cifar(tmp_path, split, name="cifar100")
        assert np.array_equal(data.images.numpy(), imgs)
        assert data.labels.tolist() == [99, 0, 42]
        assert data.classes == names


# ---------------------------------------------------------------- CIFAR python + restricted unpickler


def _maybe_bytes(d: dict, as_bytes: bool) -> dict:
    return {(k.encode() if as_bytes else k): v for k, v in d.items()}


def _write_cifar10_py(root: Path, protocol: int, bytes_keys: bool) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [n.encode() for n in C10_NAMES] if bytes_keys else C10_NAMES
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(_maybe_bytes({"label_names": names, "num_vis": 3072}, bytes_keys), f, protocol=protocol)
    truth = {"train": ([], []), "test": ([], [])}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        imgs = _pixels(2, seed=10 + i)
        labels = [(3 * i) % 10, (3 * i + 1) % 10]
        batch = {"batch_label": b"batch", "labels": labels, "data": imgs.reshape(2, -1),
                 "filenames": [b"a.png", b"b.png"]}
        with open(folder / name, "wb") as f:
            pickle.dump(_maybe_bytes(batch, bytes_keys), f, protocol=protocol)
        key = "test" if name.startswith("test") else "train"
        truth[key][0].append(imgs)
        truth[key][1].append(labels)
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in truth.items()}


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_python_round_trip(tmp_path, protocol, bytes_keys):
    truth = _write_cifar10_py(tmp_path, protocol, bytes_keys)
    for split in ("train", "test"):
        data = read_cifar(tmp_path, split)
        assert np.array_equal(data.images.numpy(), truth[split][0])
        assert np.array_equal(data.labels.numpy(), truth[split][1])
        assert data.classes == C10_NAMES


def test_cifar100_python_round_trip(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"c{i}".encode() for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": names[:20]}, f, protocol=2)
    imgs = _pixels(4, 7)
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": imgs.reshape(4, -1), b"fine_labels": [5, 99, 0, 17],
                     b"coarse_labels": [1, 1, 1, 1]}, f, protocol=2)
    data = read_cifar(folder, "train", name="cifar100")
    assert np.array_equal(data.images.numpy(), imgs)
    assert data.labels.tolist() == [5, 99, 0, 17]
    assert data.classes[99] == "c99"


def _py2_pickle(obj) -> bytes:
    """Protocol-2 bytes as Python 2 + numpy 1.x wrote them (py2 str = SHORT_BINSTRING/BINSTRING,
    arrays through ``numpy.core.multiarray._reconstruct``)."""

    def enc(o) -> bytes:
        if isinstance(o, bytes):
            return (b"U" + bytes([len(o)]) + o) if len(o) < 256 else (b"T" + struct.pack("<I", len(o)) + o)
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        if isinstance(o, list):
            return b"](" + b"".join(enc(x) for x in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        assert isinstance(o, np.ndarray) and o.dtype == np.uint8 and o.ndim == 2
        minus_one = b"J" + struct.pack("<i", -1)
        dtype = (b"cnumpy\ndtype\n" + enc(b"u1") + b"K\x00K\x01\x87R"  # dtype('u1', 0, 1)
                 + b"(K\x03" + enc(b"|") + b"NNN" + minus_one + minus_one + b"K\x00tb")  # state
        head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + enc(b"b") + b"\x87R"
        shape = enc(o.shape[0]) + enc(o.shape[1]) + b"\x86"
        state = b"(K\x01" + shape + dtype + b"\x89" + enc(o.tobytes()) + b"tb"  # (1, shape, dtype, False, raw)
        return head + state

    return b"\x80\x02" + enc(obj) + b"."


def test_python2_style_pickle_with_numpy_core_globals(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(_py2_pickle({b"label_names": [n.encode() for n in C10_NAMES]}))
    imgs = _pixels(3, 5)
    (folder / "test_batch").write_bytes(_py2_pickle({b"batch_label": b"testing batch 1 of 1",
                                                     b"labels": [9, 0, 4], b"data": imgs.reshape(3, -1)}))
    loaded = restricted_load((folder / "test_batch").read_bytes())
    assert set(loaded) == {b"batch_label", b"labels", b"data"}
    data = read_cifar(tmp_path, "test")
    assert np.array_equal(data.images.numpy(), imgs)
    assert data.labels.tolist() == [9, 0, 4]
    assert data.classes == C10_NAMES


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        pickle.dumps({"data": _Evil(os.system, f"touch {marker}")}, protocol=2),
        pickle.dumps(_Evil(eval, f"open({str(marker)!r}, 'w').close()"), protocol=4),
        b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",  # protocol 0, old-style
    ]
    for payload in payloads:
        with pytest.raises(DataFormatError, match="refusing to unpickle"):
            restricted_load(payload)
        assert not marker.exists()
    assert issubclass(RestrictedUnpickler, pickle.Unpickler)
    # a poisoned file inside a CIFAR layout is refused with its path
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(payloads[0])
    with pytest.raises(DataFormatError, match="batches.meta"):
        read_cifar(tmp_path, "test")
    assert not marker.exists()


def test_restricted_load_edge_cases():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):  # protocol 5 arrays go through numpy's _frombuffer
        out = restricted_load(pickle.dumps({"a": arr}, protocol=protocol))
        assert np.array_equal(out["a"], arr) and out["a"].dtype == np.uint8
    with pytest.raises(DataFormatError, match="latin-1"):
        restricted_load(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataFormatError, match="not a valid CIFAR python pickle"):
        restricted_load(b"definitely not a pickle")
    with pytest.raises(DataFormatError, match="refusing"):
        restricted_load(pickle.dumps(np.float32(1.5), protocol=2))  # numpy scalar global: not admitted


def test_cifar_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataFormatError, match="cifar-10-batches-bin.*cifar-10-batches-py"):
        read_cifar(tmp_path, "train")
    with pytest.raises(DataFormatError, match="cifar-100-binary"):
        read_cifar(tmp_path, "train", name="cifar100")
    _write_cifar10_bin(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataFormatError, match="data_batch_3.bin.*expected layout"):
        read_cifar(tmp_path, "train")
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3072)  # one byte short of a record
    with pytest.raises(DataFormatError, match="3073-byte record"):
        read_cifar(tmp_path, "test")
    (folder / "test_batch.bin").write_bytes(bytes([10]) + b"\x00" * 3072)  # label 10 of 10 classes
    with pytest.raises(DataFormatError, match="outside 0..9"):
        read_cifar(tmp_path, "test")
    (folder / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DataFormatError, match="batches.meta.txt"):
        read_cifar(tmp_path, "test")
    with pytest.raises(ConfigError, match="train, test"):
        read_cifar(tmp_path, "validation")
    with pytest.raises(ConfigError, match="cifar100"):
        read_cifar(tmp_path, "train", name="cifar1000")


def test_cifar_python_malformed_batch(tmp_path):
    _write_cifar10_py(tmp_path, 4, False)
    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(DataFormatError, match="expected uint8 \\[2, 3072\\]"):
        read_cifar(tmp_path, "test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"labels": [0, 1]}, f)
    with pytest.raises(DataFormatError, match="no 'data' entry"):
        read_cifar(tmp_path, "test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(DataFormatError, match="not a dict"):
        read_cifar(tmp_path, "test")


# ---------------------------------------------------------------- SVHN


def test_svhn_round_trip_and_errors(tmp_path):
    from scipy.io import savemat

    imgs = _pixels(4, 3)  # N, C, H, W
    y = np.array([[10], [1], [5], [9]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": np.transpose(imgs, (2, 3, 1, 0)), "y": y})
    data = read_svhn(tmp_path, "train")
    assert np.array_equal(data.images.numpy(), imgs)
    assert data.labels.tolist() == [0, 1, 5, 9]
    assert data.classes == [str(d) for d in range(10)]
    with pytest.raises(DataFormatError, match="test_32x32.mat.*expected layout"):
        read_svhn(tmp_path, "test")
    savemat(tmp_path / "extra_32x32.mat", {"X": np.transpose(imgs, (2, 3, 1, 0)), "y": y * 0})
    with pytest.raises(DataFormatError, match="expected 1..10"):
        read_svhn(tmp_path, "extra")
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(DataFormatError, match="MATLAB"):
        read_svhn(tmp_path, "test")
    with pytest.raises(ConfigError, match="train, test, extra"):
        read_svhn(tmp_path, "unlabeled")


# ---------------------------------------------------------------- STL-10


def _stl_bytes(imgs: np.ndarray) -> bytes:
    # each channel plane column-major, as the STL-10 binary release stores it
    return np.ascontiguousarray(imgs.transpose(0, 1, 3, 2)).tobytes()


def test_stl10_orientation_labels_and_splits(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n")
    marked = np.zeros((1, 3, 96, 96), dtype=np.uint8)
    marked[0, 0, 0, 5] = 255  # red dot in the top row, column 5: asymmetric under transposition
    marked[0, 2, 40:, :3] = 200  # blue bar at the bottom-left
    imgs = np.concatenate([marked, _pixels(1, 1, side=96)])
    (folder / "train_X.bin").write_bytes(_stl_bytes(imgs))
    (folder / "train_y.bin").write_bytes(bytes([1, 10]))
    (folder / "unlabeled_X.bin").write_bytes(_stl_bytes(imgs[::-1]))
    data = read_stl10(tmp_path, "train")
    assert data.images.shape == (2, 3, 96, 96)
    assert data.images[0, 0, 0, 5] == 255 and data.images[0, 0, 5, 0] == 0
    assert data.images[0, 2, 95, 0] == 200 and data.images[0, 2, 0, 95] == 0
    assert np.array_equal(data.images.numpy(), imgs)
    assert data.labels.tolist() == [0, 9] and data.classes[9] == "k9"
    unl = read_stl10(folder, "unlabeled")
    assert np.array_equal(unl.images.numpy(), imgs[::-1]) and unl.labels.tolist() == [-1, -1]
    small = read_stl10(tmp_path, "train", image_size=32)
    assert small.images.shape == (2, 3, 32, 32)
    assert torch.equal(small.images, resize_images(torch.from_numpy(imgs), 32))
    with pytest.raises(DataFormatError, match="test_X.bin.*stl10_binary"):
        read_stl10(tmp_path, "test")
    (folder / "test_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataFormatError, match="3 x 96 x 96"):
        read_stl10(tmp_path, "test")
    (folder / "test_X.bin").write_bytes(_stl_bytes(imgs))
    (folder / "test_y.bin").write_bytes(bytes([1]))
    with pytest.raises(DataFormatError, match="1 labels for 2 images"):
        read_stl10(tmp_path, "test")
    (folder / "test_y.bin").write_bytes(bytes([0, 11]))
    with pytest.raises(DataFormatError, match="expected 1..10"):
        read_stl10(tmp_path, "test")
    with pytest.raises(DataFormatError, match="stl10_binary"):
        read_stl10(_empty(tmp_path), "train")


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty"
    path.mkdir(exist_ok=True)
    return path


# ---------------------------------------------------------------- image folders


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_image_folder_round_trip_order_and_modes(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    _save(tmp_path / "train" / "dog" / "b.PNG", b)
    _save(tmp_path / "train" / "dog" / "a.bmp", a)
    _save(tmp_path / "train" / "cat" / "z.png", gray)
    _save(tmp_path / "train" / "cat" / "y.png", rgba)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    _save(tmp_path / "train" / "cat" / ".hidden.png", a)
    data = read_image_folder(tmp_path, "train")
    assert data.classes == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images.shape == (4, 3, 8, 8) and data.images.dtype == torch.uint8
    hwc = data.images.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(hwc[0], rgba[..., :3])  # cat/y.png
    assert np.array_equal(hwc[1], np.repeat(gray[..., None], 3, axis=2))  # cat/z.png
    assert np.array_equal(hwc[2], a) and np.array_equal(hwc[3], b)
    files, labels, classes = list_image_files(tmp_path, "train")
    assert [f.name for f in files] == ["y.png", "z.png", "a.bmp", "b.PNG"]
    # results do not depend on the threading
    threaded = read_image_folder(tmp_path, "train", num_workers=4, chunk=1)
    assert torch.equal(threaded.images, data.images) and torch.equal(threaded.labels, data.labels)


def test_image_folder_sizes_jpeg_nesting_and_errors(tmp_path):
    root = tmp_path / "mydata"
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)
    small = np.full((6, 6, 3), 77, dtype=np.uint8)
    _save(root / "test" / "x" / "big.png", big)
    _save(root / "test" / "y" / "small.JPG", small)
    with pytest.raises(DataFormatError, match="pass image_size"):
        read_image_folder(root, "test")
    data = read_image_folder(tmp_path, "test", image_size=10)  # parent of the dataset folder
    assert data.images.shape == (2, 3, 10, 10)
    expected = np.asarray(Image.fromarray(big).resize((10, 10), Image.Resampling.BILINEAR))
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), expected)
    assert int((data.images[1].int() - 77).abs().max()) <= 3  # JPEG of a flat image
    with pytest.raises(DataFormatError, match="no folder.*<split>/<class_name>"):
        read_image_folder(root, "train")
    (root / "test" / "x" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataFormatError, match="broken.png"):
        read_image_folder(root, "test", image_size=10)
    (root / "val").mkdir()
    with pytest.raises(DataFormatError, match="no class sub-folders"):
        read_image_folder(root, "val")
    (root / "val" / "empty_class").mkdir()
    with pytest.raises(DataFormatError, match="no image files"):
        read_image_folder(root, "val")
    with pytest.raises(ConfigError, match="plain folder name"):
        read_image_folder(root, "../test")
    with pytest.raises(DataFormatError, match="not an existing folder"):
        read_image_folder(tmp_path / "missing", "test")


# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    targets = load_digits().target
    np.random.seed(123)
    torch.manual_seed(123)
    train, test = digits_split_indices(targets, 0.25)
    np.random.seed(7)
    torch.manual_seed(7)
    train2, test2 = digits_split_indices(targets, 0.25)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert not set(train.tolist()) & set(test.tolist())
    assert len(train) + len(test) == len(targets) == 1797
    for c in range(10):
        n_c = int((targets == c).sum())
        assert int((targets[test] == c).sum()) == round(n_c * 0.25)
    with pytest.raises(ConfigError, match="test_fraction"):
        digits_split_indices(targets, 1.0)


def test_read_digits_shapes_values_and_channels():
    tr = read_digits("train")
    te = read_digits("test")
    assert tr.images.shape == (len(tr), 1, 32, 32) and tr.images.dtype == torch.uint8  # grey by default
    assert len(tr) + len(te) == 1797 and tr.classes == [str(d) for d in range(10)]
    rgb = read_digits("train", channels=3)  # still possible on request
    assert rgb.images.shape == (len(tr), 3, 32, 32) and torch.equal(rgb.images[:, 2], tr.images[:, 0])
    raw = read_digits("test", image_size=8, channels=1)
    assert raw.images.shape == (len(te), 1, 8, 8)
    assert int(raw.images.max()) == 255 and int(raw.images.min()) == 0
    from sklearn.datasets import load_digits

    _, test_idx = digits_split_indices(load_digits().target)
    src = load_digits().images[test_idx]
    assert np.array_equal(raw.images[:, 0].numpy(), np.rint(src * 255 / 16).astype(np.uint8))
    assert torch.equal(te.images, resize_images(raw.images, 32))
    assert torch.equal(read_digits("test").images, te.images)
    assert torch.equal(te.labels, raw.labels)
    with pytest.raises(ConfigError, match="1 or 3"):
        read_digits(channels=2)
    with pytest.raises(ConfigError, match="train, test"):
        read_digits("unlabeled")


# ---------------------------------------------------------------- resizing and load_dataset


def test_resize_images_and_image_size_checks():
    flat = torch.full((2, 3, 12, 12), 90, dtype=torch.uint8)
    assert torch.equal(resize_images(flat, 5), torch.full((2, 3, 5, 5), 90, dtype=torch.uint8))
    assert resize_images(flat, 12) is flat
    big = resize_images(torch.from_numpy(_pixels(3, 2, side=8)), 16, chunk=2)
    assert big.shape == (3, 3, 16, 16) and big.dtype == torch.uint8
    with pytest.raises(DataFormatError, match="uint8"):
        resize_images(flat.float(), 4)
    for bad in (0, -3, 2.5, True, "32"):
        with pytest.raises(ConfigError, match="image_size"):
            check_image_size(bad)
    assert check_image_size(None) is None and check_image_size(np.int64(7)) == 7


def test_load_dataset_dispatch_and_errors(tmp_path):
    assert DATASET_NAMES == ("digits", "cifar10", "cifar100", "svhn", "stl10", "folder")
    digits = load_dataset("digits", "test", image_size=16, channels=1)
    assert digits.images.shape[1:] == (1, 16, 16)
    truth = _write_cifar10_bin(tmp_path)
    full = load_dataset("CIFAR-10", "test", root=tmp_path)
    assert np.array_equal(full.images.numpy(), truth["test"][0])
    small = load_dataset("cifar10", "test", root=str(tmp_path), image_size=16)
    assert small.images.shape == (3, 3, 16, 16)
    assert torch.equal(small.images, resize_images(full.images, 16))
    assert torch.equal(small.labels, full.labels)
    _save(tmp_path / "imgs" / "train" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    folder = load_dataset("folder", "train", root=tmp_path / "imgs", image_size=6)
    assert folder.images.shape == (1, 3, 6, 6) and folder.classes == ["a"]
    with pytest.raises(ConfigError, match="digits, cifar10, cifar100, svhn, stl10, folder"):
        load_dataset("imagenet")
    for name in ("cifar10", "cifar100", "svhn", "stl10", "folder"):
        with pytest.raises(ConfigError, match="needs root"):
            load_dataset(name, "train")
    with pytest.raises(ConfigError, match="does not take option"):
        load_dataset("cifar10", "test", root=tmp_path, test_fraction=0.5)
    # channels: RGB sets read as luma on request, 3 is a no-op; grey digits are never repeated unasked
    grey = load_dataset("cifar10", "test", root=tmp_path, channels=1)
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    expect = (full.images.float() * w).sum(1, keepdim=True).round().to(torch.uint8)
    assert grey.images.shape == (3, 1, 32, 32) and torch.equal(grey.images, expect)
    assert torch.equal(load_dataset("cifar10", "test", root=tmp_path, channels=3).images, full.images)
    assert load_dataset("digits", "test", image_size=8).images.shape[1] == 1
    assert load_dataset("digits", "test", image_size=8, channels=3).images.shape[1] == 3
    for bad in (2, 0, True):
        with pytest.raises(ConfigError, match="channels must be 1 or 3"):
            load_dataset("digits", "test", channels=bad)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("digits", image_size=0)
    assert set(readers.__all__) >= {"load_dataset", "read_cifar", "restricted_load", "RestrictedUnpickler"}
