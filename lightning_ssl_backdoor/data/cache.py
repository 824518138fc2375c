"""Decode cache: a dataset split decoded once, re-read in about a second.

Decoding 60,000 CIFAR-10 JPEGs takes ~16 s on two cores; the decoded uint8 arrays load from an
uncompressed ``.npz`` in well under a second. One file per (dataset, split, image size, reader
options, root), named by a hash of those, holding ``images``, ``labels``, ``classes`` and a JSON
``manifest`` with

* ``sources``: a fingerprint of every file the data came from: sha256 of the content for single
  files (archives, batch files) and for trees of up to ``CONTENT_HASH_MAX_FILES`` files; for larger
  image-folder trees the relative path, size and modification time of every file (hashing 60,000
  files on every start would cost what the cache saves);
* ``arrays``: sha256 of each stored array (:func:`~lightning_ssl_backdoor.data.artifacts.sha256_array`).

On load both are checked: changed sources make the cache stale, and it is rebuilt (a warning says
why) and replaced atomically (temporary file, then rename); a cache file that cannot be read or
interpreted (truncated, tampered, a manifest that is not a JSON object) is set aside as
``NAME.corrupt-N`` with a warning naming it (:mod:`~lightning_ssl_backdoor.data.cache_entry`),
and rebuilt. Only regular files are fingerprinted: a FIFO or a device in the data (a symbolic
link to ``/dev/zero``) is refused with its name, never opened.
Loaded with ``allow_pickle=False``. Where the cache lives: ``cache_dir``, else
``$SSL_BACKDOOR_CACHE``, else ``$XDG_CACHE_HOME/lightning_ssl_backdoor`` (``~/.cache/...``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from lightning_ssl_backdoor.data.artifacts import sha256_array
from lightning_ssl_backdoor.data.cache_entry import set_aside
from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.readers_common import not_regular, open_regular

CACHE_VERSION = 1
CONTENT_HASH_MAX_FILES = 256


def default_cache_dir() -> Path:
    env = os.environ.get("SSL_BACKDOOR_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_ssl_backdoor"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint(root: Path) -> list[dict]:
    """What the data under ``root`` (a file or a folder) was read from (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        return [{"path": root.name, "size": root.stat().st_size, "sha256": _sha256_file(root)}]
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    by_content = len(files) <= CONTENT_HASH_MAX_FILES
    out = []
    for f in files:
        st = f.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block for ever, /dev/zero never ends
            raise not_regular(f, st.st_mode)
        entry = {"path": f.relative_to(root).as_posix(), "size": st.st_size}
        if by_content:
            entry["sha256"] = _sha256_file(f)
        else:
            entry["mtime_ns"] = st.st_mtime_ns
        out.append(entry)
    return out


def cache_key(**fields) -> str:
    text = json.dumps({"version": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read(path: Path, sources: list[dict]) -> tuple[Optional[ImageSet], str, bool]:
    """The cached ImageSet, or ``(None, why it cannot be used, whether the file is corrupt)``."""
    try:
        with open_regular(path, "decode cache") as handle, np.load(handle, allow_pickle=False) as z:
            manifest = json.loads(str(z["manifest"][()]))
            arrays = {k: z[k] for k in ("images", "labels", "classes")}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        return None, f"it cannot be read ({type(exc).__name__})", True
    if not isinstance(manifest, dict) or not isinstance(manifest.get("arrays", {}), dict):
        return None, "its manifest is not a JSON object of the expected form", True
    if manifest.get("sources") != sources:
        return None, "the source files changed", False
    for name, arr in arrays.items():
        if manifest.get("arrays", {}).get(name) != sha256_array(arr):
            return None, f"its '{name}' array does not match the manifest's sha256 (tampered or truncated)", True
    try:
        data = ImageSet(images=torch.from_numpy(arrays["images"]), labels=torch.from_numpy(arrays["labels"]),
                        classes=[str(c) for c in arrays["classes"]])
    except (TypeError, ValueError, RuntimeError) as exc:  # arrays of a shape or dtype no reader writes
        return None, f"its arrays are inconsistent ({type(exc).__name__}: {exc})", True
    return data, "", False


def _write(path: Path, data: ImageSet, manifest: dict) -> None:
    arrays = {
        "images": np.ascontiguousarray(data.images.numpy()),
        "labels": np.ascontiguousarray(data.labels.numpy()),
        "classes": np.asarray(data.classes, dtype=np.str_),
    }
    manifest = {**manifest, "arrays": {k: sha256_array(v) for k, v in arrays.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, manifest=np.asarray(json.dumps(manifest, sort_keys=True)), **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_load(loader: Callable[[], ImageSet], root: Path, cache_dir: Optional[Path], **key_fields) -> ImageSet:
    """``loader()``'s ImageSet, read from / written to the decode cache (see the module docstring).

    ``key_fields`` (dataset, split, image size, reader options) name the cache entry; ``root`` is
    fingerprinted. A cache folder that cannot be written only costs the speed-up (a warning).
    """
    root = Path(root).resolve()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(root=str(root), **key_fields)
    label = "-".join(str(key_fields.get(k)) for k in ("dataset", "split") if key_fields.get(k) is not None)
    path = folder / f"{label or 'data'}-{key}.npz"
    sources = source_fingerprint(root)
    if path.exists():
        data, why, corrupt = _read(path, sources)
        if data is not None:
            return data
        if corrupt:
            set_aside(path, why)
        else:
            warnings.warn(f"decode cache '{path}' is stale because {why}; rebuilding it.", stacklevel=2)
    data = loader()
    try:
        _write(path, data, {"version": CACHE_VERSION, "key": key_fields, "root": str(root), "sources": sources})
    except OSError as exc:
        warnings.warn(f"could not write the decode cache '{path}' ({exc}); set data cache_dir to a writable folder.",
                      stacklevel=2)
    return data
