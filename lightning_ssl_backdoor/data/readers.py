"""Dataset readers: every supported format in, an :class:`ImageSet` (uint8 ``N x C x H x W``) out.

``load_dataset(name, split, root, image_size)`` is the one entry point the rest of the package
uses; the per-format readers live in ``readers_cifar`` (CIFAR-10/100 binary and python
releases), ``readers_svhn_stl`` (SVHN ``.mat``, STL-10 binary), ``readers_folder`` (image
folders) and here (scikit-learn's bundled 8 x 8 digits, which need no files). Each module's
docstring states the file layout it reads.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lightning_ssl_backdoor.data.cache import cached_load
from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.readers_archive import (
    archive_has_split,
    cifar_archive_kind,
    find_archives,
    read_archive_folder,
    read_cifar_archive,
)
from lightning_ssl_backdoor.data.readers_cifar import CIFAR_SPLITS, has_cifar_release, read_cifar
from lightning_ssl_backdoor.data.readers_common import as_path, check_image_size, check_split, resize_images
from lightning_ssl_backdoor.data.readers_folder import IMAGE_EXTENSIONS, list_image_files, read_image_folder
from lightning_ssl_backdoor.data.readers_pickle import RestrictedUnpickler, restricted_load
from lightning_ssl_backdoor.data.readers_svhn_stl import STL10_SPLITS, SVHN_SPLITS, read_stl10, read_svhn
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError

DATASET_NAMES = ("digits", "cifar10", "cifar100", "svhn", "stl10", "folder")
DIGITS_SPLITS = ("train", "test")
DIGITS_SPLIT_SEED = 0  # fixed: the digits train/test split never depends on an experiment seed

__all__ = [
    "CIFAR_SPLITS",
    "DATASET_NAMES",
    "DIGITS_SPLITS",
    "IMAGE_EXTENSIONS",
    "STL10_SPLITS",
    "SVHN_SPLITS",
    "RestrictedUnpickler",
    "digits_split_indices",
    "list_image_files",
    "load_dataset",
    "read_cifar",
    "read_cifar_any",
    "read_digits",
    "read_image_folder",
    "read_stl10",
    "read_svhn",
    "resize_images",
    "restricted_load",
]


def digits_split_indices(targets: np.ndarray, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split of ``targets``: sorted (train, test) index arrays.

    Each class is shuffled with its own generator seeded ``DIGITS_SPLIT_SEED`` and its first
    ``round(n_class * test_fraction)`` (at least 1, at most ``n_class - 1``) members go to test.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}.")
    targets = np.asarray(targets).reshape(-1)
    train, test = [], []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(members.size)
        n_test = int(round(members.size * float(test_fraction)))
        n_test = min(max(n_test, 1), members.size - 1) if members.size > 1 else 0
        test.append(members[order[:n_test]])
        train.append(members[order[n_test:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def read_digits(split: str = "train", image_size: int = 32, channels: int = 1,
                test_fraction: float = 0.25) -> ImageSet:
    """scikit-learn's bundled digits (1,797 images, 8 x 8) as uint8 ``[N, channels, S, S]``.

    Pixel values 0..16 are scaled to 0..255 and upscaled bilinearly to ``image_size``. The digits
    are grey, so they stay one channel by default; ``channels=3`` repeats the grey plane into three
    identical channels (only for a model that insists on RGB input: a perturbation optimised per
    channel then turns into colour, which no clean digit has). The stratified train/test split is
    fixed (see :func:`digits_split_indices`). Classes are ``"0".."9"``. Reads no files.
    """
    from sklearn.datasets import load_digits

    split = check_split(split, DIGITS_SPLITS, "digits")
    size = check_image_size(image_size)
    if size is None:
        raise ConfigError("digits needs an image_size (8 keeps the original resolution).")
    if channels not in (1, 3):
        raise ConfigError(f"digits channels must be 1 or 3, got {channels!r}.")
    bunch = load_digits()
    targets = bunch.target.astype(np.int64)
    train_idx, test_idx = digits_split_indices(targets, test_fraction)
    idx = train_idx if split == "train" else test_idx
    pixels = np.rint(bunch.images[idx] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = resize_images(torch.from_numpy(pixels)[:, None], size)
    if channels == 3:
        images = images.repeat(1, 3, 1, 1)
    return ImageSet(images=images.contiguous(), labels=torch.from_numpy(targets[idx]),
                    classes=[str(d) for d in range(10)])


def _call(reader, dataset: str, kwargs: dict, **fixed) -> ImageSet:
    """Call ``reader`` with ``fixed`` plus the user's ``kwargs``, rejecting unknown options clearly."""
    accepted = set(inspect.signature(reader).parameters) - set(fixed)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"dataset '{dataset}' does not take option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(sorted(accepted)) or 'none'}."
        )
    return reader(**fixed, **kwargs)


def _has_split_folder(root: Path, split: str) -> bool:
    if (root / split).is_dir():
        return True
    return any((p / split).is_dir() for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_cifar_any(root, split: str = "train", name: str = "cifar10", image_size: Optional[int] = None) -> ImageSet:
    """CIFAR-10/100 in whichever form ``root`` holds it, with no manual extraction step.

    Tried in order: the extracted binary / python release (:func:`read_cifar`); the official
    archives ``cifar-10-{binary,python}.tar.gz`` (``root`` the archive or its folder); an image-folder
    tree ``root/<split>/<class>/*``; archives packing such a tree (``train.tar.gz`` holding
    ``cifar10/train/<class>/*.jpg``). Class names come from the release's meta file or, for folders,
    the sorted folder names (alphabetical is CIFAR-10's label order).
    """
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    split = check_split(split, CIFAR_SPLITS, key)
    path = Path(os.fspath(root)).expanduser() if root is not None else None
    if path is not None and path.is_file():
        archives = [path]
    else:
        folder = as_path(root, key)
        if has_cifar_release(folder, key):  # a broken release file is reported, not skipped
            return read_cifar(folder, split, key)
        if _has_split_folder(folder, split):
            return read_image_folder(folder, split, image_size)
        archives = find_archives(folder)
    official = [a for a in archives if cifar_archive_kind(a, key)]
    if official:
        official.sort(key=lambda a: cifar_archive_kind(a, key) != "binary")  # binary first: no unpickling
        return read_cifar_archive(official[0], split, key)
    packed = [a for a in archives if archive_has_split(a, split)]
    if packed:
        return read_archive_folder(packed, split, image_size)
    raise DataFormatError(
        f"no {key} data for split '{split}' under '{root}'; expected the binary or python release "
        f"(extracted or as the official .tar.gz), or image folders <split>/<class>/<image> (plain or in .tar.gz)."
    )


# name -> (root, split, image_size) -> (reader, the arguments load_dataset fixes)
_READERS = {
    "digits": lambda root, split, size: (read_digits, {"split": split, "image_size": size or 32}),
    "cifar10": lambda root, split, size: (read_cifar_any, {"root": root, "split": split, "name": "cifar10",
                                                           "image_size": size}),
    "cifar100": lambda root, split, size: (read_cifar_any, {"root": root, "split": split, "name": "cifar100",
                                                            "image_size": size}),
    "svhn": lambda root, split, size: (read_svhn, {"root": root, "split": split}),
    "stl10": lambda root, split, size: (read_stl10, {"root": root, "split": split, "image_size": size}),
    "folder": lambda root, split, size: (read_image_folder,
                                         {"root": root, "split": split, "image_size": size}),
}


def _convert_channels(data: ImageSet, channels: int, dataset: str) -> ImageSet:
    """RGB -> luma (BT.601 weights, rounded to uint8) for ``channels=1``; grey is never repeated."""
    if channels != 1 or data.images.shape[1] != 3:
        raise ConfigError(
            f"dataset '{dataset}' has {data.images.shape[1]}-channel images and cannot be read with "
            f"channels={channels}; use channels: 1 (luma) or leave channels unset."
        )
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (data.images.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    return ImageSet(images=grey.contiguous(), labels=data.labels, classes=data.classes,
                    true_labels=data.true_labels)


def load_dataset(name: str, split: str = "train", root=None, image_size: Optional[int] = None,
                 channels: Optional[int] = None, cache: bool = True, cache_dir=None,
                 **kwargs) -> ImageSet:
    """Read dataset ``name`` (one of ``DATASET_NAMES``) and return its ``split`` as an ImageSet.

    ``root`` is the folder (or archive) holding the files (not needed for "digits"). With
    ``image_size`` the images come back as ``image_size`` x ``image_size`` (bilinear on float, then
    quantised, for every format). ``channels`` (1 or 3; None keeps the format's own count: 1 for
    digits, 3 for the others) goes to a reader that takes it (digits); for the other formats
    ``channels=1`` converts the RGB images to their luma (ITU-R BT.601, rounded) and ``channels=3``
    is what they already are. Extra keyword arguments go to the format's reader (e.g.
    ``test_fraction`` for digits). File-based data sets go through the decode cache
    (:mod:`~lightning_ssl_backdoor.data.cache`; ``cache=False`` skips it, ``cache_dir`` moves it).
    """
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset '{name}'; valid names: {', '.join(DATASET_NAMES)}.")
    size = check_image_size(image_size)
    if key != "digits" and (root is None or (isinstance(root, str) and not root.strip())):
        raise ConfigError(f"dataset '{key}' needs root=<folder with its files>; only 'digits' is bundled.")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ConfigError(f"channels must be 1 or 3 (or null for the dataset's own), got {channels!r}.")
    reader, fixed = _READERS[key](root, split, size)
    own_channels = "channels" in inspect.signature(reader).parameters
    if channels is not None and own_channels:
        kwargs = {**kwargs, "channels": int(channels)}

    def load() -> ImageSet:
        data = _call(reader, key, kwargs, **fixed)
        if channels is not None and not own_channels and data.images.shape[1] != channels:
            data = _convert_channels(data, int(channels), key)
        if size is not None and tuple(data.images.shape[-2:]) != (size, size):
            data = ImageSet(images=resize_images(data.images, size), labels=data.labels,
                            classes=data.classes, true_labels=data.true_labels)
        return data

    if key == "digits" or not cache:
        return load()
    source = Path(os.fspath(root)).expanduser()
    if not source.exists():
        raise DataFormatError(f"the {key} root '{source}' does not exist; point root at your copy of the data.")
    options = sorted(kwargs.items()) + ([("channels", 1)] if channels == 1 and not own_channels else [])
    return cached_load(load, source, cache_dir, dataset=key, split=str(split), image_size=size,
                       options=options)
