"""Safe artifacts: ``.npz`` arrays (never pickled) plus a JSON manifest with a sha256 per array.

Writes are atomic: the data goes to a temporary file in the destination folder, then is renamed, so
an interrupted write never leaves a half-written artifact behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from lightning_ssl_backdoor.errors import ArtifactError

MANIFEST_SUFFIX = ".json"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def sha256_array(a: np.ndarray) -> str:
    """sha256 over dtype, shape and the C-contiguous bytes of ``a``."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _to_numpy(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.dtype == object:
        raise ArtifactError("object arrays cannot be stored in an artifact; store numbers only.")
    return a


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``path`` (``.npz``) and ``path`` with suffix ``.json`` (manifest: meta + sha256 per array).

    The manifest is written last, so an artifact whose manifest exists is complete.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ArtifactError(f"artifact path must end in .npz, got {path}.")
    np_arrays = {k: _to_numpy(v) for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **np_arrays)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    manifest = {
        "meta": dict(meta or {}),
        "arrays": {
            k: {"sha256": sha256_array(a), "dtype": a.dtype.str, "shape": list(a.shape)}
            for k, a in np_arrays.items()
        },
        "file_sha256": sha256_file(path),
    }
    atomic_write_json(path.with_suffix(MANIFEST_SUFFIX), manifest)
    return path


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load an artifact written by :func:`save_arrays`, verifying every hash; returns (arrays, meta)."""
    path = Path(path)
    mpath = path.with_suffix(MANIFEST_SUFFIX)
    if not path.is_file() or not mpath.is_file():
        raise ArtifactError(
            f"artifact {path} is incomplete: both {path.name} and {mpath.name} must exist."
        )
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"manifest {mpath} is not valid JSON ({e.msg}).") from None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{path} is not a readable .npz archive ({e}).") from None
    expected = manifest.get("arrays", {})
    if set(expected) != set(arrays):
        raise ArtifactError(
            f"{path} holds arrays {sorted(arrays)} but its manifest lists {sorted(expected)}."
        )
    for k, a in arrays.items():
        if sha256_array(a) != expected[k]["sha256"]:
            raise ArtifactError(f"array '{k}' in {path} does not match its sha256 in the manifest.")
    return arrays, manifest.get("meta", {})
