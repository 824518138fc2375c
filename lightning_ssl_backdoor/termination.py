"""SIGTERM is handled like Ctrl-C: the run stops cleanly, says how to resume and exits 143.

``kill PID``, a job scheduler's time limit or ``docker stop`` send SIGTERM, whose default action
ends the process at once: no ``finally`` runs, so the output folder's lock stays, and worker
processes of ``experiment --jobs N`` are orphaned and train on. Here:

* the command-line process (:func:`handled`, entered by the error boundary) turns SIGTERM into the
  Ctrl-C path: the handler calls whatever handles SIGINT at that moment, so inside a fit the
  interrupt checkpoint is saved at the next step boundary
  (:class:`~lightning_ssl_backdoor.checkpoint_io.GracefulInterrupt`) and elsewhere a
  ``KeyboardInterrupt`` unwinds the stack: the worker pool is terminated, locks are released, and
  the error boundary prints the resume hint and exits ``128 + SIGTERM = 143``
  (:func:`received` tells it apart from Ctrl-C's 130);
* a worker process (:func:`install_worker`, called first thing in a pool task) releases the locks
  it holds (:func:`~lightning_ssl_backdoor.io_lock.release_all`), deletes the temporary file of an
  atomic write in progress (:func:`writing`) and exits at once with 143 and no traceback when its
  parent terminates the pool; its last periodic checkpoint is the resume point.

Lightning installs its own SIGTERM handler during ``fit`` and calls a handler installed before it
as well, so both stay in effect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from types import FrameType
from typing import Iterator, Optional

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, the shell's convention

_received = False
#: temporary files this process is writing right now (atomic writes): a terminated worker removes them
_writing: set[str] = set()


@contextlib.contextmanager
def writing(path) -> Iterator[None]:  # noqa: ANN001
    """Mark ``path`` (a temporary file of an atomic write) as being written for the ``with`` body."""
    _writing.add(os.fspath(path))
    try:
        yield
    finally:
        _writing.discard(os.fspath(path))


def _quiet_lightning_sigterm() -> None:
    # Lightning logs "[rank: 0] Received SIGTERM: 15" at INFO in every process: the one line said is ours
    for ns in ("pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(f"{ns}.trainer.connectors.signal_connector").setLevel(logging.WARNING)


#: SIGINT was ignored when :func:`handled` was entered (a job started in the background by a
#: non-interactive shell): then an ignored SIGINT at SIGTERM time is not Lightning shutting down
_sigint_ignored_at_start = False


def received() -> bool:
    """Whether this process received SIGTERM since :func:`handled` was entered."""
    return _received


def _like_ctrl_c(signum: int, frame: Optional[FrameType]) -> None:
    global _received
    _received = True
    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.SIG_IGN and not _sigint_ignored_at_start:
        return  # Lightning shutting down after an interrupt: it ends by itself
    if handler is signal.SIG_IGN:  # a background job (`cmd &`): SIGINT ignored from the start, act anyway
        raise KeyboardInterrupt
    if callable(handler):
        handler(signal.SIGINT, frame)  # Python's default raises KeyboardInterrupt; a fit's guard sets its flag
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """For the ``with`` body, SIGTERM in this (the command line's) process behaves as Ctrl-C (main
    thread only); the previous handler is restored after it."""
    global _received, _sigint_ignored_at_start
    _received = False
    _sigint_ignored_at_start = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    _quiet_lightning_sigterm()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _like_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _worker_exit(signum: int, frame: Optional[FrameType]) -> None:
    from lightning_ssl_backdoor.io_lock import release_all

    release_all()
    for tmp in list(_writing):  # a checkpoint or artifact cut short: nothing half-written stays
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    os._exit(EXIT_TERMINATED)


def install_worker() -> None:
    """SIGTERM in a pool worker: release its locks and exit 143 at once (no traceback)."""
    _quiet_lightning_sigterm()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _worker_exit)
