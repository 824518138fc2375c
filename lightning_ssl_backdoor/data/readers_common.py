"""Helpers shared by the dataset readers: split checks, folder discovery, class-name files, resizing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.data.imageset import quantize
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError


def as_path(root, dataset: str) -> Path:
    """``root`` as a ``Path``; a ConfigError when it is missing or not a folder."""
    if root is None or (isinstance(root, str) and not root.strip()):
        raise ConfigError(f"dataset '{dataset}' needs a root folder; pass root=<folder with the files>.")
    path = Path(os.fspath(root)).expanduser()
    if not path.is_dir():
        raise DataFormatError(
            f"the {dataset} root '{path}' is not an existing folder; point root at the folder "
            "that holds the extracted dataset files."
        )
    return path


def check_split(split: str, allowed: Sequence[str], dataset: str) -> str:
    """Return ``split`` lower-cased, or raise a ConfigError naming the splits ``dataset`` has."""
    value = str(split).strip().lower()
    if value not in allowed:
        raise ConfigError(
            f"{dataset} has no split '{split}'; use one of: {', '.join(allowed)}."
        )
    return value


#: Largest accepted side length. The data sets and models here work at 8-96 px (digits 8, CIFAR 32,
#: STL-10 96); image folders may hold ImageNet-like 224-512 px images. 1024 px is already 3 MB per
#: uint8 RGB image (150 GB for CIFAR-10's 50,000 images), so a larger value is a typo (100000 would
#: ask for 30 GB per image) and is refused before anything is allocated.
MAX_IMAGE_SIZE = 1024


def check_image_size(image_size: Optional[int]) -> Optional[int]:
    """``None`` or an int in 1..MAX_IMAGE_SIZE; a ConfigError for anything else."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer or None, got {image_size!r}.")
    if image_size > MAX_IMAGE_SIZE:
        raise ConfigError(
            f"image_size {image_size} is larger than {MAX_IMAGE_SIZE} px (3 MB per image already); "
            f"give the side length the model should see, e.g. 32 for CIFAR-10."
        )
    return int(image_size)


def find_data_dir(root: Path, folder_names: Iterable[str], markers: Iterable[str]) -> Optional[Path]:
    """The first of ``root`` and ``root/<folder_name>`` that holds any of the ``markers`` files."""
    markers = list(markers)
    for candidate in [root, *(root / name for name in folder_names)]:
        if candidate.is_dir() and any((candidate / m).is_file() for m in markers):
            return candidate
    return None


def require_file(folder: Path, name: str, layout: str) -> Path:
    """``folder/name`` if it is a file, else a DataFormatError that states the expected ``layout``."""
    path = folder / name
    if not path.is_file():
        raise DataFormatError(f"missing file '{path}'; expected layout: {layout}.")
    return path


def read_class_names(path: Path, expected: Optional[int], layout: str) -> list[str]:
    """Non-empty lines of a text file (one class name a line)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataFormatError(f"cannot read '{path}' ({exc}); expected layout: {layout}.") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or (expected is not None and len(names) != expected):
        raise DataFormatError(
            f"'{path}' lists {len(names)} class names, expected {expected or 'at least one'} "
            f"(one a line); expected layout: {layout}."
        )
    return names


def read_bytes_file(path: Path, record: int, layout: str) -> np.ndarray:
    """A raw uint8 file as ``[N, record]``; a DataFormatError when empty or not a whole number of records."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % record:
        raise DataFormatError(
            f"'{path}' has {data.size} bytes, not a positive multiple of the {record}-byte record "
            f"size; the file is truncated or not in the expected layout: {layout}."
        )
    return data.reshape(-1, record)


def check_labels(labels: np.ndarray, num_classes: int, path: Path, layout: str) -> np.ndarray:
    """``labels`` as int64, or a DataFormatError when any lies outside ``[0, num_classes)``."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFormatError(
            f"'{path}' holds labels in [{labels.min()}, {labels.max()}], outside 0..{num_classes - 1}; "
            f"expected layout: {layout}."
        )
    return labels


def resize_images(images: torch.Tensor, image_size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 ``[N, C, H, W]`` images to ``image_size`` x ``image_size``.

    Bilinear on float [0, 1] (antialiased when shrinking), then quantised; done ``chunk`` images at
    a time so large sets never hold a float copy of the whole tensor. Returns ``images`` itself
    when it already has that size.
    """
    size = check_image_size(image_size)
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise DataFormatError(
            f"resize_images needs uint8 N x C x H x W images, got {images.dtype} {tuple(images.shape)}."
        )
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    shrink = size < h or size < w
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].float().div_(255.0)
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        out[start:start + chunk] = quantize(y)
    return out
