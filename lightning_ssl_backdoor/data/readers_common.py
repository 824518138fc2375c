"""Helpers shared by the dataset readers: split checks, folder discovery, class-name files, resizing."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterable, Optional, Sequence

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


#: Largest accepted image, in pixels (width x height), checked from the file's header before it is
#: decoded: 4096 x 4096 is 50 MB as uint8 RGB, far above any image these models take, while a
#: header may claim 100,000 x 100,000 (30 GB) in a few hundred bytes (a decompression bomb).
MAX_IMAGE_PIXELS = 4096 * 4096


def open_image(source, where: str, formats: Sequence[str]):
    """``PIL.Image.open(source)`` restricted to ``formats``, refusing an image above
    :data:`MAX_IMAGE_PIXELS` (named by ``where``) before any pixel is decoded."""
    from PIL import Image

    try:
        img = Image.open(source, formats=list(formats))
    except Image.DecompressionBombError:  # PIL's own limit (far above ours), checked at open time
        raise DataFormatError(f"image '{where}' claims more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a "
                              f"decompression bomb?), above the limit of {MAX_IMAGE_PIXELS:,}; resize or remove it.") from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise DataFormatError(f"image '{where}' is {width}x{height} = {width * height:,} pixels, above the limit of "
                              f"{MAX_IMAGE_PIXELS:,}; resize or remove it.")
    return img


def find_data_dir(root: Path, folder_names: Iterable[str], markers: Iterable[str]) -> Optional[Path]:
    """The first of ``root`` and ``root/<folder_name>`` that holds any of the ``markers`` files."""
    markers = list(markers)
    for candidate in [root, *(root / name for name in folder_names)]:
        if candidate.is_dir() and any((candidate / m).is_file() for m in markers):
            return candidate
    return None


def _kind(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file is, in words."""
    for test, words in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISDIR, "a folder")):
        if test(mode):
            return words
    return "not a regular file"


def not_regular(path: Path, mode: int, what: str = "data file") -> DataFormatError:
    """The error for ``path`` (of ``st_mode`` ``mode``) that is no regular file (a FIFO would block
    a reader for ever, ``/dev/zero`` never ends): only regular files are read as data."""
    link = " (through a symbolic link)" if os.path.islink(path) else ""
    return DataFormatError(f"{what} '{path}' is {_kind(mode)}{link}, not a regular file; only regular files "
                           "are read: remove it or replace it with the file itself.")


def check_regular(path: Path, what: str = "data file") -> Path:
    """``path`` when it is a regular file (symbolic links followed), else a DataFormatError."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise not_regular(Path(path), mode, what)
    return Path(path)


def open_regular(path, what: str = "data file") -> BinaryIO:
    """``open(path, "rb")`` that refuses anything but a regular file without blocking: the file is
    opened non-blocking (a FIFO with no writer would otherwise block the open itself) and checked
    with ``fstat`` on the opened descriptor, so a file swapped after a check is caught too."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(Path(path), mode, what)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def require_file(folder: Path, name: str, layout: str) -> Path:
    """``folder/name`` if it is a regular file, else a DataFormatError that states the expected ``layout``."""
    path = folder / name
    if not path.is_file():
        if path.exists():  # a FIFO, a device, a folder
            raise not_regular(path, os.stat(path).st_mode)
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
    with open_regular(path) as handle:
        data = np.fromfile(handle, dtype=np.uint8)
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
