"""Image-folder reader: ``root/<split>/<class>/<image>``.

Layout read: ``root/<split>/<class_name>/*.{png,jpg,jpeg,bmp,webp}`` (extension case-insensitive;
other files and hidden entries are ignored). Class names are the sorted sub-folder names of
``root/<split>`` and labels index that list. ``root`` may also be the parent of a single folder
that holds the split folders (as ``tar -xzf cifar10-test.tar.gz`` makes ``cifar10/test/...``).
Images may have any size and mode: they are converted to RGB and, when ``image_size`` is given,
resized with PIL's bilinear filter. Decoding runs in a thread pool; the order is deterministic
(class, then file name).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.readers_common import as_path, check_image_size, open_image, open_regular
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")  # never probe other decoders, whatever a file holds
_LAYOUT = "root/<split>/<class_name>/<image>.{png,jpg,jpeg,bmp,webp}, one sub-folder per class"


def _split_dir(root: Path, split: str) -> Path:
    """``root/split``, or ``root/<only child>/split`` when ``root`` is the parent of the dataset."""
    direct = root / split
    if direct.is_dir():
        return direct
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    nested = [p / split for p in children if (p / split).is_dir()]
    if len(nested) == 1:
        return nested[0]
    raise DataFormatError(f"no folder '{direct}' for split '{split}'; expected layout: {_LAYOUT}.")


def list_image_files(root, split: str = "train") -> tuple[list[Path], np.ndarray, list[str]]:
    """The image files of ``root/<split>`` sorted by class then name, their labels and the classes."""
    split = str(split).strip()
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise ConfigError(f"split must be a plain folder name such as 'train', got {split!r}.")
    folder = _split_dir(as_path(root, "folder"), split)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataFormatError(f"'{folder}' has no class sub-folders; expected layout: {_LAYOUT}.")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(
            entry.name for entry in os.scandir(folder / name)
            if not entry.name.startswith(".") and entry.is_file()
            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
        )
        files.extend(folder / name / f for f in found)
        labels.extend([label] * len(found))
    if not files:
        raise DataFormatError(f"'{folder}' holds no image files; expected layout: {_LAYOUT}.")
    return files, np.asarray(labels, dtype=np.int64), classes


def _decode(path: Path, image_size: Optional[int]) -> np.ndarray:
    """One image as uint8 ``[H, W, 3]``."""
    from PIL import Image

    try:
        with open_regular(path, "image") as handle, open_image(handle, str(path), _PIL_FORMATS) as img:
            if img.mode != "RGB":
                img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DataFormatError(f"cannot decode image '{path}' ({exc}); replace or remove the file.") from exc


def read_image_folder(root, split: str = "train", image_size: Optional[int] = None,
                      num_workers: Optional[int] = None, chunk: int = 512) -> ImageSet:
    """Read ``root/<split>/<class>/*`` (see the module docstring) as uint8 ``[N, 3, H, W]``.

    Without ``image_size`` every image must have the size of the first one. ``num_workers``
    threads decode ``chunk`` files per task (default: ``min(8, 2 x CPU count)``).
    """
    image_size = check_image_size(image_size)
    chunk = max(1, int(chunk))
    files, labels, classes = list_image_files(root, split)
    first = _decode(files[0], image_size)
    height, width = first.shape[:2]
    out = np.empty((len(files), height, width, 3), dtype=np.uint8)
    out[0] = first

    def work(start: int) -> None:
        for i in range(max(start, 1), min(start + chunk, len(files))):
            img = _decode(files[i], image_size)
            if img.shape != first.shape:
                raise DataFormatError(
                    f"'{files[i]}' is {img.shape[1]}x{img.shape[0]} but '{files[0]}' is "
                    f"{width}x{height}; pass image_size to resize all images to one size."
                )
            out[i] = img

    workers = num_workers or min(8, 2 * (os.cpu_count() or 1))
    starts = range(0, len(files), chunk)
    if workers <= 1 or len(starts) == 1:
        for start in starts:
            work(start)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(work, starts):  # re-raises the first failure in file order
                pass
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=images, labels=torch.from_numpy(labels), classes=classes)
