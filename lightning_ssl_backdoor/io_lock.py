"""One writer per output: a lock file holding the writer's pid, released at exit.

``locked_output(folder)`` locks an output *folder* (``folder/.lock``, for ``experiment``);
``locked_output(file)`` with a suffix locks one output *file* (``.NAME.lock`` beside it, for
``poison``), so two runs writing different artifacts into one folder do not block each other.
The lock is taken with ``O_CREAT | O_EXCL`` (atomic on local filesystems). A lock left by a process
that no longer runs on this machine (killed, power cut) is taken over; a lock held by a live process
stops the second run with one sentence (:class:`OutputLockedError`, exit code 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from lightning_ssl_backdoor.errors import OutputLockedError

#: the locks this process holds (released by :func:`release_all` when a worker is terminated)
_HELD: set[Path] = set()


def lock_path(target: Path) -> Path:
    target = Path(target)
    if target.suffix:  # a file: lock beside it
        return target.parent / f".{target.name}.lock"
    return target / ".lock"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def acquire(target: Path) -> Path:
    """Take the lock of ``target`` (creating its folder); raise OutputLockedError if a live run holds it."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:  # being written right now, or garbage from a crash mid-write
                time.sleep(0.05)
                holder = _holder(path)
            same_host = holder is not None and holder.get("host") == me["host"]
            if holder is not None and (not same_host or _alive(int(holder.get("pid", -1)))):
                where = "" if same_host else f" on {holder.get('host')}"
                raise OutputLockedError(
                    f"{target} is being written by another run (pid {holder.get('pid')}{where}); wait for it "
                    f"to finish or choose another output; if no such run exists, delete {path}."
                ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        _HELD.add(path)
        return path
    raise OutputLockedError(f"could not lock {target}: {path} keeps reappearing; is another run starting?")


def release(path: Path) -> None:
    _HELD.discard(path)
    holder = _holder(path)
    if holder is not None and holder.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def release_all() -> None:
    """Release every lock this process holds (a worker stopped by SIGTERM: :mod:`lightning_ssl_backdoor.termination`)."""
    for path in list(_HELD):
        with contextlib.suppress(OSError):
            release(path)


@contextlib.contextmanager
def locked_output(target: Optional[Path]) -> Iterator[Optional[Path]]:
    """Hold the lock of ``target`` (a folder, or a file path with a suffix) for the ``with`` body."""
    if target is None:
        yield None
        return
    folder = lock_path(Path(target)).parent
    existed = folder.exists()
    path = acquire(Path(target))
    try:
        yield path
    finally:
        release(path)
        if not existed:  # a run that stopped before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def waiting_lock(target: Path, poll_seconds: float = 5.0, timeout_seconds: Optional[float] = None) -> Iterator[Path]:
    """Hold the lock of ``target`` for the ``with`` body, first WAITING while another live process
    holds it (where :func:`locked_output` refuses at once): for a cached stage that parallel rows
    share (DBD's SimCLR pre-training), the second row waits for the first to finish it and then
    finds it cached. A lock whose process is gone is taken over at once. ``timeout_seconds``
    (default: wait for ever) raises :class:`OutputLockedError` when exceeded."""
    start = time.monotonic()
    while True:
        try:
            path = acquire(Path(target))
            break
        except OutputLockedError:
            if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
                raise
            time.sleep(poll_seconds)
    try:
        yield path
    finally:
        release(path)
