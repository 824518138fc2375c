"""SVHN (cropped digits, ``.mat``) and STL-10 (binary) readers.

Layouts read:

* SVHN: ``root/{train,test,extra}_32x32.mat`` (MATLAB v5, read with ``scipy.io.loadmat``);
  ``X`` is uint8 ``[32, 32, 3, N]`` and ``y`` is ``[N, 1]`` with labels 1..10, where 10 is the
  digit 0. Classes are ``"0".."9"`` and the label of an image is its digit.
* STL-10: ``root/stl10_binary/`` (or ``root`` itself) with ``{train,test}_X.bin``,
  ``{train,test}_y.bin``, ``unlabeled_X.bin`` and ``class_names.txt``. Each image is 3 x 96 x 96
  bytes, each channel stored column-major (MATLAB order), so a plane read row-major is the
  transposed image; labels are one byte each, 1..10. Unlabeled images get label -1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.readers_common import (
    as_path,
    check_image_size,
    check_split,
    find_data_dir,
    open_regular,
    read_class_names,
    require_file,
    resize_images,
)
from lightning_ssl_backdoor.errors import DataFormatError

SVHN_SPLITS = ("train", "test", "extra")
STL10_SPLITS = ("train", "test", "unlabeled")
_SVHN_LAYOUT = ("SVHN cropped digits 'root/{train,test,extra}_32x32.mat' holding X uint8 "
                "[32, 32, 3, N] and y [N, 1] with labels 1..10 (10 = digit 0)")
_STL_LAYOUT = ("STL-10 binary release 'stl10_binary/' with {train,test}_X.bin, {train,test}_y.bin, "
               "unlabeled_X.bin and class_names.txt (root may be that folder or its parent)")
_STL_SIDE = 96
_STL_BYTES = 3 * _STL_SIDE * _STL_SIDE


def read_svhn(root, split: str = "train") -> ImageSet:
    """Read SVHN ``<split>_32x32.mat`` from ``root`` as uint8 ``[N, 3, 32, 32]``, classes "0".."9"."""
    from scipy.io import loadmat

    split = check_split(split, SVHN_SPLITS, "SVHN")
    folder = as_path(root, "svhn")
    path = require_file(folder, f"{split}_32x32.mat", _SVHN_LAYOUT)
    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises several unrelated types for broken files
        raise DataFormatError(
            f"cannot read '{path}' as a MATLAB file ({type(exc).__name__}: {exc}); expected layout: "
            f"{_SVHN_LAYOUT}."
        ) from exc
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DataFormatError(f"'{path}' lacks the X or y variable; expected layout: {_SVHN_LAYOUT}.")
    y = np.asarray(y).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.size:
        raise DataFormatError(
            f"'{path}' has X {tuple(x.shape)} and {y.size} labels, expected X [H, W, 3, N] with one "
            f"label per image; expected layout: {_SVHN_LAYOUT}."
        )
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataFormatError(
            f"'{path}' holds labels in [{y.min()}, {y.max()}], expected 1..10; expected layout: "
            f"{_SVHN_LAYOUT}."
        )
    labels = np.where(y == 10, 0, y).astype(np.int64)
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))).astype(np.uint8, copy=False)
    return ImageSet(images=torch.from_numpy(images), labels=torch.from_numpy(labels),
                    classes=[str(d) for d in range(10)])


def _stl_images(path: Path, image_size: Optional[int], chunk: int = 2048) -> torch.Tensor:
    """Read an STL-10 ``*_X.bin`` file chunk by chunk into uint8 ``[N, 3, H, W]`` (H = W = 96 or
    ``image_size``), fixing the column-major orientation."""
    size = path.stat().st_size
    if size == 0 or size % _STL_BYTES:
        raise DataFormatError(
            f"'{path}' has {size} bytes, not a positive multiple of {_STL_BYTES} (3 x 96 x 96); "
            f"expected layout: {_STL_LAYOUT}."
        )
    n = size // _STL_BYTES
    side = image_size or _STL_SIDE
    out = torch.empty((n, 3, side, side), dtype=torch.uint8)
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, _STL_SIDE, _STL_SIDE))
    try:
        for start in range(0, n, chunk):
            block = torch.from_numpy(np.ascontiguousarray(raw[start:start + chunk].transpose(0, 1, 3, 2)))
            out[start:start + chunk] = resize_images(block, side) if image_size else block
    finally:
        del raw
    return out


def read_stl10(root, split: str = "train", image_size: Optional[int] = None) -> ImageSet:
    """Read STL-10 ``split`` ("train", "test" or "unlabeled") as uint8 ``[N, 3, 96, 96]``.

    Labels 1..10 in the files become 0..9; "unlabeled" images get -1. With ``image_size`` the
    images are resized while reading (the 100,000 unlabeled images then never sit in memory at
    96 x 96).
    """
    split = check_split(split, STL10_SPLITS, "STL-10")
    image_size = check_image_size(image_size)
    root = as_path(root, "stl10")
    markers = ("class_names.txt", "train_X.bin", "test_X.bin", "unlabeled_X.bin")
    folder = find_data_dir(root, ["stl10_binary"], markers)
    if folder is None:
        raise DataFormatError(f"no STL-10 files found under '{root}'; expected layout: {_STL_LAYOUT}.")
    classes = read_class_names(require_file(folder, "class_names.txt", _STL_LAYOUT), 10, _STL_LAYOUT)
    images = _stl_images(require_file(folder, f"{split}_X.bin", _STL_LAYOUT), image_size)
    if split == "unlabeled":
        return ImageSet(images=images, labels=torch.full((len(images),), -1, dtype=torch.int64),
                        classes=classes)
    label_path = require_file(folder, f"{split}_y.bin", _STL_LAYOUT)
    with open_regular(label_path) as handle:
        raw = np.fromfile(handle, dtype=np.uint8)
    if raw.size != len(images):
        raise DataFormatError(
            f"'{label_path}' has {raw.size} labels for {len(images)} images; expected layout: "
            f"{_STL_LAYOUT}."
        )
    if raw.size and (raw.min() < 1 or raw.max() > len(classes)):
        raise DataFormatError(
            f"'{label_path}' holds labels in [{raw.min()}, {raw.max()}], expected 1..{len(classes)}; "
            f"expected layout: {_STL_LAYOUT}."
        )
    labels = raw.astype(np.int64) - 1
    return ImageSet(images=images, labels=torch.from_numpy(labels), classes=classes)
