"""Datasets read straight from ``.tar`` / ``.tar.gz`` archives, with no extraction step.

Two kinds of archive are read:

* **CIFAR official archives** ``cifar-10-binary.tar.gz``, ``cifar-10-python.tar.gz``,
  ``cifar-100-binary.tar.gz``, ``cifar-100-python.tar.gz``: the members are found by their file
  names (``data_batch_1.bin``, ``test_batch``, ``batches.meta.txt``, ...) wherever they sit inside
  the archive; python pickles go through the restricted unpickler only.
* **Packed image folders**: any archive whose members look like ``.../<split>/<class>/<image>``
  (for example ``train.tar.gz`` holding ``cifar10/train/airplane/0000.jpg``). Every archive given
  is scanned and the members of the requested split are kept; class names are the sorted folder
  names, as in :mod:`~lightning_ssl_backdoor.data.readers_folder`.

Decoding runs in a thread pool over the members' bytes (PIL releases the GIL while decoding); the
order is deterministic (class, then file name).
"""

from __future__ import annotations

import contextlib
import io
import lzma
import os
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.readers_common import open_image, open_regular
from lightning_ssl_backdoor.data.readers_folder import IMAGE_EXTENSIONS
from lightning_ssl_backdoor.data.readers_pickle import restricted_load
from lightning_ssl_backdoor.errors import DataFormatError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
_PIXELS = 3 * 32 * 32

#: (binary file names per split, binary meta, label offset, python files, python meta, label key, names key)
_CIFAR_MEMBERS = {
    "cifar10": {
        "bin": {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
        "bin_meta": "batches.meta.txt", "offset": 0,
        "py": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "py_meta": "batches.meta", "py_labels": "labels", "py_names": "label_names", "num_classes": 10,
    },
    "cifar100": {
        "bin": {"train": ["train.bin"], "test": ["test.bin"]},
        "bin_meta": "fine_label_names.txt", "offset": 1,
        "py": {"train": ["train"], "test": ["test"]},
        "py_meta": "meta", "py_labels": "fine_labels", "py_names": "fine_label_names", "num_classes": 100,
    },
}


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def find_archives(root: Path) -> list[Path]:
    """``root`` itself when it is an archive, else the archives directly inside the folder ``root``."""
    if is_archive(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and is_archive(p))


#: what reading a damaged archive raises: tarfile's errors, gzip's (an OSError) and zlib's, and the
#: EOFError of a compressed stream that ends early (a truncated download)
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tarfile.TarFile]:
    """The archive ``path`` opened for reading (a regular file only); a truncated or corrupted
    archive, found while opening it or anywhere while reading its members, is a DataFormatError
    naming it."""
    with open_regular(path, "archive") as handle:  # a missing or unreadable file: its own sentence
        try:
            with tarfile.open(fileobj=handle, mode="r:*") as tar:
                yield tar
        except _ARCHIVE_ERRORS as exc:
            raise DataFormatError(
                f"archive '{path}' is truncated or corrupted ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                "download it again or replace it with a valid .tar.gz.") from None


def _read_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The regular-file members of ``path`` whose base name is in ``wanted``, by base name."""
    out: dict[str, bytes] = {}
    with _open(path) as tar:
        for member in tar:
            name = os.path.basename(member.name)
            if member.isfile() and name in wanted and name not in out:
                out[name] = _member_bytes(tar, member, path)
    return out


#: Largest archive member read into memory: CIFAR-100's ``train`` batch, the largest member of the
#: releases read here, is 155 MB; a member declaring more (a gzip bomb of zeros) is refused unread.
MAX_MEMBER_BYTES = 1 << 30


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    """The bytes of the regular-file ``member`` of archive ``path``, at most :data:`MAX_MEMBER_BYTES`."""
    if member.size > MAX_MEMBER_BYTES:
        raise DataFormatError(f"member '{member.name}' of archive '{path}' declares {member.size:,} bytes, above the "
                              f"limit of {MAX_MEMBER_BYTES:,}; it is not a data set file: remove it from the archive.")
    handle = tar.extractfile(member)
    return b"" if handle is None else handle.read()


def cifar_archive_kind(path: Path, name: str) -> Optional[str]:
    """``"binary"`` / ``"python"`` when ``path``'s file name is that CIFAR release's archive."""
    low = path.name.lower()
    stem = "cifar-10-" if name == "cifar10" else "cifar-100-"
    if not low.startswith(stem):
        return None
    if "binary" in low or "-bin" in low:
        return "binary"
    if "python" in low or "-py" in low:
        return "python"
    return None


def read_cifar_archive(path: Path, split: str, name: str = "cifar10") -> ImageSet:
    """A CIFAR split from the official ``cifar-10(0)-{binary,python}.tar.gz`` archive ``path``."""
    info = _CIFAR_MEMBERS[name]
    kind = cifar_archive_kind(path, name)
    if kind == "binary":
        files, meta = info["bin"][split], info["bin_meta"]
    else:
        files, meta = info["py"][split], info["py_meta"]
    members = _read_members(path, set(files) | {meta})
    missing = [f for f in [*files, meta] if f not in members]
    if missing:
        raise DataFormatError(
            f"archive '{path}' lacks {', '.join(missing)}; it is not a complete {name} {kind} release."
        )
    images, labels = [], []
    if kind == "binary":
        classes = [ln.strip() for ln in members[meta].decode("utf-8", "replace").splitlines() if ln.strip()]
        record = info["offset"] + 1 + _PIXELS
        for f in files:
            rows = np.frombuffer(members[f], dtype=np.uint8)
            if rows.size == 0 or rows.size % record:
                raise DataFormatError(f"member '{f}' of '{path}' is not a whole number of {record}-byte records.")
            rows = rows.reshape(-1, record)
            labels.append(rows[:, info["offset"]].astype(np.int64))
            images.append(rows[:, info["offset"] + 1:].reshape(-1, 3, 32, 32))
    else:
        meta_obj = _load_pickle(members[meta], path, meta)
        classes = [_text(c) for c in meta_obj.get(info["py_names"], [])]
        for f in files:
            batch = _load_pickle(members[f], path, f)
            data = batch.get("data")
            lab = np.asarray(batch.get(info["py_labels"], []), dtype=np.int64)
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size != lab.size * _PIXELS:
                raise DataFormatError(f"member '{f}' of '{path}' does not hold uint8 [N, 3072] data with N labels.")
            labels.append(lab)
            images.append(data.reshape(-1, 3, 32, 32))
    lab = np.concatenate(labels)
    if len(classes) != info["num_classes"] or lab.min() < 0 or lab.max() >= info["num_classes"]:
        raise DataFormatError(f"archive '{path}' has {len(classes)} class names or labels outside 0..{info['num_classes'] - 1}.")
    return ImageSet(images=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
                    labels=torch.from_numpy(lab), classes=classes)


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _load_pickle(data: bytes, path: Path, member: str) -> dict:
    try:
        obj = restricted_load(io.BytesIO(data))
    except DataFormatError as exc:
        raise DataFormatError(f"member '{member}' of '{path}': {exc}") from exc
    if not isinstance(obj, dict):
        raise DataFormatError(f"member '{member}' of '{path}' holds a {type(obj).__name__}, not a dict.")
    return {_text(k): v for k, v in obj.items()}


def _folder_member(name: str, split: str) -> Optional[tuple[str, str]]:
    """``(class, file)`` when member ``name`` is ``.../<split>/<class>/<file.image>``."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) < 3 or parts[-3] != split:
        return None
    cls, file = parts[-2], parts[-1]
    if cls.startswith(".") or file.startswith(".") or os.path.splitext(file)[1].lower() not in IMAGE_EXTENSIONS:
        return None
    return cls, file


def archive_has_split(path: Path, split: str) -> bool:
    """Whether archive ``path`` holds at least one ``.../<split>/<class>/<image>`` member."""
    with _open(path) as tar:
        return any(m.isfile() and _folder_member(m.name, split) for m in tar)


def _decode(data: bytes, where: str, image_size: Optional[int]) -> np.ndarray:
    from PIL import Image

    try:
        with open_image(io.BytesIO(data), where, _PIL_FORMATS) as img:
            if img.mode != "RGB":
                img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataFormatError(f"cannot decode image '{where}' ({exc}); replace or remove it.") from exc


def read_archive_folder(archives: Sequence[Path], split: str = "train", image_size: Optional[int] = None,
                        num_workers: Optional[int] = None) -> ImageSet:
    """The ``<split>/<class>/<image>`` members of ``archives`` as uint8 ``[N, 3, H, W]``."""
    found: dict[tuple[str, str], tuple[bytes, str]] = {}
    for path in archives:
        with _open(path) as tar:
            for member in tar:
                key = _folder_member(member.name, split) if member.isfile() else None
                if key is None or key in found:
                    continue
                found[key] = (_member_bytes(tar, member, path), f"{path}:{member.name}")
    if not found:
        names = ", ".join(str(p) for p in archives)
        raise DataFormatError(
            f"no '<{split}>/<class>/<image>' members in {names}; pack the images as "
            f"{split}/<class_name>/<image>.jpg (any folder above is fine)."
        )
    keys = sorted(found)
    classes = sorted({c for c, _ in keys})
    labels = np.asarray([classes.index(c) for c, _ in keys], dtype=np.int64)
    first = _decode(found[keys[0]][0], found[keys[0]][1], image_size)
    out = np.empty((len(keys), *first.shape), dtype=np.uint8)
    out[0] = first

    def work(start: int, chunk: int = 1024) -> None:
        for i in range(max(start, 1), min(start + chunk, len(keys))):
            data, where = found[keys[i]]
            img = _decode(data, where, image_size)
            if img.shape != first.shape:
                raise DataFormatError(
                    f"'{where}' is {img.shape[1]}x{img.shape[0]} but the first image is "
                    f"{first.shape[1]}x{first.shape[0]}; pass image_size to resize all images to one size."
                )
            out[i] = img

    workers = num_workers or min(8, 2 * (os.cpu_count() or 1))
    starts = range(0, len(keys), 1024)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(work, starts):
            pass
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=images, labels=torch.from_numpy(labels), classes=classes)
