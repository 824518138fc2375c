"""Training that diverges stops: a loss that is NaN or infinite ends the fit with one sentence.

A run whose loss became NaN (a learning rate of ``.nan`` or far too high, an exploding unlabeled
loss) would otherwise train on to ``max_steps`` with NaN weights and report a clean accuracy near
chance as if it were a result. :class:`DivergenceGuard` (every :class:`~lightning_ssl_backdoor.ssl.SSLModule`
adds it through ``configure_callbacks``) raises :class:`~lightning_ssl_backdoor.errors.TrainingDiverged`
instead, naming the step from which the loss is not finite and the learning rate; the fit stops
before the test, so no result (``metrics.json``, results row) is written.

No host-device synchronisation per step: after every step the guard updates, on the loss's device,
the first step of the current run of non-finite losses (reset by a finite one), and reads it back
only every ``trainer.log_every_n_steps`` steps (when Lightning reads the logged values anyway),
before every validation, before every checkpoint is written (so a resume point never holds
diverged weights) and at the end of the fit. A run is stopped when the latest loss is not
finite, so a single overflow that mixed precision's loss scaler skips does not stop it, while
NaN weights (which keep every later loss NaN) always do.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from lightning_ssl_backdoor._lightning import Callback
from lightning_ssl_backdoor.errors import TrainingDiverged


class DivergenceGuard(Callback):
    """Stops the fit with :class:`TrainingDiverged` once the training loss is NaN or infinite."""

    def __init__(self) -> None:
        self._first_bad: Optional[torch.Tensor] = None  # step where the current non-finite run began, -1 if none
        self._kind: Optional[torch.Tensor] = None  # 1 NaN, 2 inf (of the latest loss)

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:  # noqa: ANN001
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not torch.is_tensor(loss) or loss.numel() != 1:
            return
        loss = loss.detach().reshape(())
        step = int(trainer.global_step)
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss)
        start = torch.where(self._first_bad < 0, torch.full_like(self._first_bad, step), self._first_bad)
        self._first_bad = torch.where(bad, start, torch.full_like(self._first_bad, -1))
        self._kind = torch.where(torch.isnan(loss), 1, 2)
        every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1))
        if step % every == 0:
            self.check(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if not trainer.sanity_checking:
            self.check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:  # noqa: ANN001
        self.check(trainer)  # before it is written: a resume point never holds diverged weights

    def check(self, trainer) -> None:  # noqa: ANN001
        """Raise :class:`TrainingDiverged` when the latest training loss was not finite."""
        if self._first_bad is None:
            return
        first = int(self._first_bad)  # the one read-back (a synchronisation on a GPU)
        if first < 0:
            return
        what = "NaN" if int(self._kind) == 1 else "infinite"
        raise TrainingDiverged(
            f"training diverged: the loss is {what} from step {first} on (of {trainer.max_steps}; "
            f"learning rate {_learning_rate(trainer)}); the likely cause is a learning rate that is too high "
            "or not a finite number, or an unstable loss weight: lower model.lr (or fix the value) and rerun; "
            "no result was written for this run."
        )


def _learning_rate(trainer) -> str:  # noqa: ANN001
    try:
        group = trainer.optimizers[0].param_groups[0]
        lr = float(group.get("initial_lr", group["lr"]))  # the configured value, not the scheduled one
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        return "unknown"
    return "nan" if math.isnan(lr) else f"{lr:g}"
