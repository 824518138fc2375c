"""Safe artifacts: ``.npz`` arrays (never pickled) plus a JSON manifest with a sha256 per array.

The manifest is a member of the archive (``__manifest__.json``, written last, recording the sha256
of every array and of every archive byte before it), so an artifact is one file. Writes are atomic:
the data goes to a temporary file in the destination folder, is fsynced, then renamed, so an
interrupted write (SIGKILL, full disk) never leaves a half-written artifact behind; a reader refuses
an archive without a manifest. ``NAME.json`` beside the archive is a readable copy of the manifest.
"""

from __future__ import annotations

import glob
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

from lightning_ssl_backdoor import faults, termination
from lightning_ssl_backdoor.errors import ArtifactError, malformed

MANIFEST_SUFFIX = ".json"  # the readable copy beside the archive
MANIFEST_MEMBER = "__manifest__.json"  # the manifest inside the archive


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with termination.writing(tmp), os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            faults.crash_point(f"write:{path.name}")
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise type(e)(e.errno, e.strerror, str(path)) from e  # a full disk names the file it was writing
        raise
    return path


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of ``path`` left by writers that were killed (their pid is gone)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_result_pair(stem: str | os.PathLike, result: Any, markdown: str) -> Path:
    """A benchmark's two outputs, each written atomically: ``STEM.json`` (the numbers) and
    ``STEM.md`` (their table); returns the ``.json`` path."""
    stem = Path(stem)
    atomic_write_text(stem.with_suffix(".md"), markdown)
    return atomic_write_json(stem.with_suffix(".json"), result)


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
    """sha256 of a regular file's bytes (a FIFO or a device is refused, never read: it may not end)."""
    from lightning_ssl_backdoor.data.readers_common import open_regular

    h = hashlib.sha256()
    with open_regular(path, "file") as fh:
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


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def _archive(np_arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The npz bytes: every array as ``NAME.npy`` (deflated), then the manifest as the last member.

    The manifest records the sha256 of every array and of every archive byte before its own entry,
    so the archive and its manifest are one file, written (and renamed into place) at once.
    """
    buf = io.BytesIO()
    stamp = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same arrays give the same bytes
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for k, a in np_arrays.items():
            with z.open(zipfile.ZipInfo(f"{k}.npy", date_time=stamp), "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, a, allow_pickle=False)
        prefix = hashlib.sha256(buf.getbuffer()[: buf.tell()]).hexdigest()
        manifest = {
            "meta": dict(meta),
            "arrays": {
                k: {"sha256": sha256_array(a), "dtype": a.dtype.str, "shape": list(a.shape)}
                for k, a in np_arrays.items()
            },
            "archive_sha256": prefix,
        }
        info = zipfile.ZipInfo(MANIFEST_MEMBER, date_time=stamp)
        info.compress_type = zipfile.ZIP_STORED
        z.writestr(info, canonical_json(manifest))
    return buf.getvalue(), manifest


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``path`` (``.npz``) holding the arrays and their manifest (meta + sha256 per array).

    The manifest is a member of the archive, so the artifact appears whole or not at all (one
    rename). A copy of the manifest is written beside it as ``NAME.json`` for people to read; readers
    trust the copy inside and refuse a ``.json`` that differs from it.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ArtifactError(f"artifact path must end in .npz, got {path}.")
    np_arrays = {k: _to_numpy(v) for k, v in arrays.items()}
    if MANIFEST_MEMBER[: -len(".json")] in np_arrays:
        raise ArtifactError(f"'{MANIFEST_MEMBER}' is reserved; rename that array.")
    blob, manifest = _archive(np_arrays, dict(meta or {}))
    side = path.with_suffix(MANIFEST_SUFFIX)
    side.unlink(missing_ok=True)  # never pair a new archive with an old copy
    atomic_write(path, lambda fh: fh.write(blob))
    atomic_write_text(side, canonical_json(manifest))
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The verified manifest of an artifact: the copy inside the archive (checked against every
    byte before it and against the ``.json`` beside it, if any), or for artifacts written before
    manifests moved inside, the ``.json`` beside it (checked against the archive's sha256)."""
    path = Path(path)
    side = path.with_suffix(MANIFEST_SUFFIX)
    if not path.is_file():
        if path.exists():  # a folder, a FIFO, a device: never opened
            from lightning_ssl_backdoor.data.readers_common import not_regular

            raise not_regular(path, path.stat().st_mode, "artifact")
        raise ArtifactError(f"artifact {path} is incomplete or missing: {path.name} does not exist.")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if MANIFEST_MEMBER in names:
                info = z.getinfo(MANIFEST_MEMBER)
                raw = z.read(MANIFEST_MEMBER)
            else:
                info = raw = None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ArtifactError(f"{path} is not a readable .npz archive ({e}); regenerate it.") from None
    if raw is None:
        if not side.is_file():
            raise ArtifactError(
                f"artifact {path} is incomplete: it holds no manifest and {side.name} does not exist; regenerate it."
            )
        raw = side.read_bytes()
    manifest = _parse_manifest(raw, side if info is None else path)
    with malformed(path, "artifact manifest of"):
        if info is not None:
            with open(path, "rb") as fh:
                prefix = hashlib.sha256(fh.read(info.header_offset)).hexdigest()
            if prefix != manifest["archive_sha256"] or raw.decode() != canonical_json(manifest):
                raise ArtifactError(f"{path} does not match the sha256 in its manifest; the archive was modified.")
            if side.is_file() and side.read_bytes() != raw:
                raise ArtifactError(f"{side} differs from the manifest inside {path.name}; it was modified after "
                                    "saving (delete it or regenerate the artifact).")
        elif "file_sha256" in manifest and manifest["file_sha256"] != sha256_file(path):
            raise ArtifactError(f"{path} does not match the file sha256 in its manifest; the archive was modified.")
        if not isinstance(manifest["arrays"], dict) or not isinstance(manifest.get("meta", {}), dict):
            raise TypeError("arrays and meta must be mappings")
    return manifest


def _parse_manifest(raw: bytes, where: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArtifactError(f"the manifest of {where} is not valid JSON; the artifact is corrupted, regenerate it.") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"the manifest of {where} is not a JSON object; regenerate the artifact.")
    return manifest


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load an artifact written by :func:`save_arrays`, verifying every hash; returns (arrays, meta)."""
    path = Path(path)
    manifest = read_manifest(path)
    skip = MANIFEST_MEMBER[: -len(".json")]
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in (skip, MANIFEST_MEMBER)}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(f"{path} is not a readable .npz archive ({e}).") from None
    expected = manifest["arrays"]
    if set(expected) != set(arrays):
        missing = sorted(set(expected) - set(arrays))
        raise ArtifactError(
            f"{path} holds arrays {sorted(arrays)} but its manifest lists {sorted(expected)}"
            + (f" (missing {missing})" if missing else "") + "; regenerate the artifact."
        )
    with malformed(path, "artifact manifest of"):
        for k, a in arrays.items():
            if sha256_array(a) != expected[k]["sha256"]:
                raise ArtifactError(f"array '{k}' in {path} does not match its sha256 in the manifest.")
    return arrays, manifest.get("meta", {})
