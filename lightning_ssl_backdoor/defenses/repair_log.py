"""TensorBoard curves for the models a defense trains in a plain torch loop (the model repairs:
FT, FP, NAD, ABL, MCR, Neural Cleanse's unlearning, all through
:func:`~lightning_ssl_backdoor.defenses.baselines._common.sgd_train`).

:meth:`~lightning_ssl_backdoor.defenses.base.ModelDefense.run` opens :func:`repair_logging` around
``repair(model, ctx)`` with the row's TensorBoard folder and run name; inside it every
``sgd_train`` call logs its loss and learning rate as the run ``<row run>/<defense>-<phase>``
(``phase``: the loop's name, ``sgd`` unless the caller names it; a second loop of the same name
gets ``-2``, ...). Outside it (a repair called from your own code) nothing is logged and no
writer is made. The loss is read from the device once per logged step, every
``max(1, steps // 100)`` steps, never on the other steps.
"""

from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Callable, Iterator, Optional

__all__ = ["repair_logging", "step_logger"]

_ACTIVE: contextvars.ContextVar[Optional["_RepairLog"]] = contextvars.ContextVar("repair_log", default=None)


class _RepairLog:
    def __init__(self, folder: Path, run: str, defense: str) -> None:
        self.folder, self.run, self.defense = Path(folder), run, defense
        self.used: dict[str, int] = {}
        self.writers: list = []

    def writer(self, phase: str):
        from torch.utils.tensorboard import SummaryWriter

        n = self.used.get(phase, 0) + 1
        self.used[phase] = n
        name = f"{self.defense}-{phase}" + (f"-{n}" if n > 1 else "")
        w = SummaryWriter(log_dir=str(self.folder / self.run / name))
        self.writers.append(w)
        return w


@contextlib.contextmanager
def repair_logging(tensorboard: Optional[tuple], defense: str) -> Iterator[None]:
    """Log every :func:`step_logger` loop inside the block under ``tensorboard = (folder, run
    name)`` (the row's, :attr:`DefenseContext.tensorboard`); ``None``: log nothing."""
    if tensorboard is None:
        yield
        return
    log = _RepairLog(Path(tensorboard[0]), str(tensorboard[1]), defense)
    token = _ACTIVE.set(log)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        for w in log.writers:
            w.close()


def step_logger(phase: str, steps: int) -> Optional[Callable[[int, Callable[[], float], float], None]]:
    """``log(step, loss, lr)`` for a loop of ``steps`` steps named ``phase`` inside
    :func:`repair_logging`, or ``None`` outside it. ``loss`` is a callable read only on the logged
    steps (every ``max(1, steps // 100)``-th and the last), so the other steps never wait for the
    device."""
    active = _ACTIVE.get()
    if active is None:
        return None
    writer = active.writer(phase)
    every = max(1, int(steps) // 100)

    def log(step: int, loss: Callable[[], float], lr: float) -> None:
        if step % every == 0 or step == int(steps) - 1:
            writer.add_scalar("train/loss", float(loss()), step)
            writer.add_scalar("lr", float(lr), step)

    return log
