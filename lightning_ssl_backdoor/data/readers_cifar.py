"""CIFAR-10 / CIFAR-100 reader for the official binary and python releases.

Layouts read (``root`` may be the extracted folder itself or its parent):

* CIFAR-10 binary: ``cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``,
  ``batches.meta.txt``; each record is 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B,
  each plane row-major 32 x 32).
* CIFAR-100 binary: ``cifar-100-binary/train.bin``, ``test.bin``, ``fine_label_names.txt``;
  each record is 1 coarse-label byte, 1 fine-label byte, 3072 pixel bytes.
* CIFAR-10 python: ``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch``, ``batches.meta``;
  pickled dicts ``{data: uint8 [N, 3072], labels: [N]}`` and ``{label_names: [10]}``.
* CIFAR-100 python: ``cifar-100-python/train``, ``test``, ``meta``; dicts
  ``{data, fine_labels, coarse_labels}`` and ``{fine_label_names: [100], ...}``.

When both releases are present the binary one is used (it needs no unpickling). The pickles are
read only through :func:`restricted_load`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.readers_common import (
    as_path,
    check_labels,
    check_split,
    open_regular,
    read_bytes_file,
    read_class_names,
    require_file,
)
from lightning_ssl_backdoor.data.readers_pickle import restricted_load
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError

CIFAR_SPLITS = ("train", "test")
_PIXELS = 3 * 32 * 32

# name -> facts about each release
_CIFAR = {
    "cifar10": {
        "title": "CIFAR-10",
        "num_classes": 10,
        "bin_dir": "cifar-10-batches-bin",
        "bin_files": {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
        "bin_meta": "batches.meta.txt",
        "bin_label_offset": 0,
        "py_dir": "cifar-10-batches-py",
        "py_files": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "py_meta": "batches.meta",
        "py_labels": "labels",
        "py_names": "label_names",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "num_classes": 100,
        "bin_dir": "cifar-100-binary",
        "bin_files": {"train": ["train.bin"], "test": ["test.bin"]},
        "bin_meta": "fine_label_names.txt",
        "bin_label_offset": 1,
        "py_dir": "cifar-100-python",
        "py_files": {"train": ["train"], "test": ["test"]},
        "py_meta": "meta",
        "py_labels": "fine_labels",
        "py_names": "fine_label_names",
    },
}


def _layout(info: dict[str, Any]) -> str:
    bin_files = ", ".join(info["bin_files"]["train"] + info["bin_files"]["test"] + [info["bin_meta"]])
    py_files = ", ".join(info["py_files"]["train"] + info["py_files"]["test"] + [info["py_meta"]])
    return (
        f"{info['title']} binary release '{info['bin_dir']}/' with {bin_files}, or python release "
        f"'{info['py_dir']}/' with {py_files} (root may be that folder or its parent)"
    )


def _detect(root: Path, info: dict[str, Any]) -> tuple[str, Path]:
    """Which release (``"binary"`` or ``"python"``) lives where under ``root``."""
    bin_markers = info["bin_files"]["train"] + info["bin_files"]["test"] + [info["bin_meta"]]
    py_markers = info["py_files"]["train"] + info["py_files"]["test"] + [info["py_meta"]]
    for kind, folder, markers in (("binary", info["bin_dir"], bin_markers),
                                  ("python", info["py_dir"], py_markers)):
        for candidate in (root, root / folder):
            if candidate.is_dir() and any((candidate / m).is_file() for m in markers):
                return kind, candidate
    raise DataFormatError(f"no {info['title']} files found under '{root}'; expected layout: {_layout(info)}.")


def has_cifar_release(root, name: str = "cifar10") -> bool:
    """Whether ``root`` (or its release sub-folder) holds any file of the extracted binary or python
    release of ``name``: then :func:`read_cifar` reads it (and reports a broken file as such)."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    try:
        _detect(Path(root), _CIFAR[key])
    except (DataFormatError, KeyError, OSError):
        return False
    return True


def _read_binary(folder: Path, split: str, info: dict[str, Any]) -> ImageSet:
    layout = _layout(info)
    classes = read_class_names(require_file(folder, info["bin_meta"], layout), info["num_classes"], layout)
    offset = info["bin_label_offset"]
    record = offset + 1 + _PIXELS
    images, labels = [], []
    for name in info["bin_files"][split]:
        path = require_file(folder, name, layout)
        rows = read_bytes_file(path, record, layout)
        labels.append(check_labels(rows[:, offset], len(classes), path, layout))
        images.append(rows[:, offset + 1:].reshape(-1, 3, 32, 32))
    return ImageSet(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        classes=classes,
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _load_dict(path: Path, layout: str) -> dict[str, Any]:
    """A CIFAR python pickle as a dict with ``str`` keys (the originals may be ``bytes``)."""
    with open_regular(path) as handle:
        try:
            obj = restricted_load(handle)
        except DataFormatError as exc:
            raise DataFormatError(f"'{path}': {exc}") from exc
    if not isinstance(obj, dict):
        raise DataFormatError(
            f"'{path}' holds a {type(obj).__name__}, not a dict; expected layout: {layout}."
        )
    return {_text(k): v for k, v in obj.items()}


def _field(batch: dict[str, Any], key: str, path: Path, layout: str) -> Any:
    if key not in batch:
        raise DataFormatError(
            f"'{path}' has no '{key}' entry (found: {', '.join(sorted(batch)) or 'none'}); "
            f"expected layout: {layout}."
        )
    return batch[key]


def _read_python(folder: Path, split: str, info: dict[str, Any]) -> ImageSet:
    layout = _layout(info)
    meta_path = require_file(folder, info["py_meta"], layout)
    names = _field(_load_dict(meta_path, layout), info["py_names"], meta_path, layout)
    classes = [_text(n) for n in list(names)]
    if len(classes) != info["num_classes"]:
        raise DataFormatError(
            f"'{meta_path}' lists {len(classes)} class names, expected {info['num_classes']}; "
            f"expected layout: {layout}."
        )
    images, labels = [], []
    for name in info["py_files"][split]:
        path = require_file(folder, name, layout)
        batch = _load_dict(path, layout)
        data = _field(batch, "data", path, layout)
        label = np.asarray(_field(batch, info["py_labels"], path, layout))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size != label.size * _PIXELS:
            shape = tuple(data.shape) if isinstance(data, np.ndarray) else type(data).__name__
            raise DataFormatError(
                f"'{path}' has data {shape} for {label.size} labels, expected uint8 "
                f"[{label.size}, {_PIXELS}]; expected layout: {layout}."
            )
        labels.append(check_labels(label, len(classes), path, layout))
        images.append(data.reshape(-1, 3, 32, 32))
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
        labels=torch.from_numpy(np.concatenate(labels)),
        classes=classes,
    )


def read_cifar(root, split: str = "train", name: str = "cifar10") -> ImageSet:
    """Read CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``name="cifar100"``, fine labels).

    Detects the binary or python release under ``root`` (the extracted folder or its parent; see
    the module docstring for the layouts) and returns uint8 ``[N, 3, 32, 32]`` images.
    """
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in _CIFAR:
        raise ConfigError(f"unknown CIFAR variant '{name}'; use 'cifar10' or 'cifar100'.")
    info = _CIFAR[key]
    split = check_split(split, CIFAR_SPLITS, info["title"])
    kind, folder = _detect(as_path(root, key), info)
    if kind == "binary":
        return _read_binary(folder, split, info)
    return _read_python(folder, split, info)
