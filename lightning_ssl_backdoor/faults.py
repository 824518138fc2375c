"""Deterministic crash points for the crash tests (inactive unless ``SSL_BACKDOOR_KILL_AT`` is set).

``SSL_BACKDOOR_KILL_AT=POINT`` or ``POINT#N`` kills the process with SIGKILL (no cleanup, no
``finally``: a power cut as far as the files can tell) the N-th time (default 1) it reaches POINT:

* ``write:<file name>``: inside an atomic write of that file, after the data went to the temporary
  file and before the rename (``write:poisoned.npz``, ``write:results.md``, ``write:history.json``);
* ``checkpoint``: inside a checkpoint write, after ``torch.save`` into the temporary file;
* ``train_step`` / ``validation``: at the end of a training step / validation batch.
"""

from __future__ import annotations

import os
import signal
from typing import Any

ENV = "SSL_BACKDOOR_KILL_AT"
_hits: dict[str, int] = {}


def crash_point(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, nth = spec.partition("#")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def training_hooks() -> list:
    """Callbacks that reach ``train_step`` / ``validation`` (none when no crash point is set)."""
    if not os.environ.get(ENV):
        return []
    from lightning_ssl_backdoor._lightning import Callback

    class _CrashHooks(Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            crash_point("train_step")

        def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
            crash_point("validation")

    return [_CrashHooks()]
