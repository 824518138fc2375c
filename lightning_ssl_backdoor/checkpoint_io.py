"""Checkpoints that survive a full disk, a crash and Ctrl-C.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes a checkpoint to a
  temporary file in the checkpoint's own folder, fsyncs it, keeps the checkpoint it replaces as
  ``NAME.prev`` and renames the new one into place: a failed write (disk full, SIGKILL) leaves the
  previous complete checkpoint. It loads with ``torch.load(weights_only=True)`` only, and turns a
  truncated file or pickled code into one sentence (:class:`CheckpointError`).
* :func:`resume_checkpoint` picks the checkpoint to resume from: ``last.ckpt`` if it is a complete
  archive, else ``last.ckpt.prev``; a damaged file is set aside as ``NAME.corrupt-N`` (kept for
  inspection) with a warning, and with nothing usable the run starts from scratch, also with a
  warning.
* :func:`fit_resumable` runs ``trainer.fit`` so that Ctrl-C stops at the next step boundary, saves
  ``last.ckpt`` there (an exact resume point) and raises ``KeyboardInterrupt`` (Lightning itself
  would ``sys.exit(1)``). Under DDP (several ranks) Ctrl-C keeps Lightning's own handling (no
  interrupt checkpoint; the periodic ones are the resume points) and still exits 130.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

from lightning_ssl_backdoor._lightning import pl
import torch
from lightning_ssl_backdoor._lightning import TorchCheckpointIO
from lightning_ssl_backdoor._lightning import Callback, ModelCheckpoint

from lightning_ssl_backdoor import faults, termination
from lightning_ssl_backdoor.errors import CheckpointError
from lightning_ssl_backdoor.quarantine import move_aside

PREV_SUFFIX = ".prev"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_is_complete(path: Path) -> bool:
    """True when ``path`` is a whole torch zip archive: central directory present, every CRC right."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            return bool(names) and any(n.endswith("data.pkl") for n in names) and z.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, keep the old one, rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with termination.writing(tmp), open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                faults.crash_point("checkpoint")
                os.fsync(fh.fileno())
            if path.exists():
                os.replace(path, path.with_name(path.name + PREV_SUFFIX))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        import pickle

        path = Path(path)
        check_checkpoint_file(path)
        try:
            return torch.load(path, map_location=map_location or (lambda storage, loc: storage), weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects that safe loading (weights_only=True) refuses "
                f"({_global_named(e)}); nothing was run: use a checkpoint written by this package."
            ) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupted ({' '.join(str(e).split())[:120]}); "
                "give another checkpoint, or delete it to start again."
            ) from None

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + PREV_SUFFIX).unlink(missing_ok=True)


def check_checkpoint_file(ckpt_path: Any) -> None:
    """Refuse a ``--ckpt_path`` that is no regular file (missing, a folder, a FIFO or device) with
    one sentence, before the Trainer writes anything (its ``config.yaml``, a log folder); the
    Trainer's own names (``last``, ``best``, ``hpc``, ``registry``) and ``None`` pass."""
    if ckpt_path is None or str(ckpt_path) in ("last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:"):
        return
    path = Path(str(ckpt_path))
    if not path.is_file():
        raise CheckpointError(_not_a_checkpoint_file(path))


def _not_a_checkpoint_file(path: Path) -> str:
    """Why ``path``, which is no regular file, cannot be a checkpoint: missing, a folder, or a FIFO /
    device (never opened: a FIFO would block, ``/dev/zero`` never ends)."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"checkpoint {path} does not exist; check --ckpt_path."
    except OSError as e:
        return f"checkpoint {path} cannot be read ({e.strerror or e}); check --ckpt_path."
    if stat.S_ISDIR(mode):
        return f"checkpoint {path} is a folder, not a checkpoint file; give the .ckpt file inside it to --ckpt_path."
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"checkpoint {path} is {kind}, not a checkpoint file; give a .ckpt file written by this package to --ckpt_path."


def _global_named(e: Exception) -> str:
    import re

    m = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f"it names {m.group(1)}" if m else "not plain tensors and numbers"


def resume_checkpoint(ckpt_dir: Path, name: str = "last.ckpt") -> Optional[Path]:
    """The complete checkpoint to resume from (``name``, else ``name.prev``), or ``None``.

    Damaged candidates are renamed to ``NAME.corrupt-<n>`` so they never shadow a good one again.
    """
    for stale in ckpt_dir.glob(f".{name}.*.tmp"):  # left by a killed write; never a resume point
        stale.unlink(missing_ok=True)
    candidates = [ckpt_dir / name, ckpt_dir / (name + PREV_SUFFIX)]
    for path in candidates:
        if not path.exists():
            continue
        if checkpoint_is_complete(path):
            if path.name != name:
                warnings.warn(f"resuming from the previous checkpoint {path}; the newest one was incomplete.",
                              stacklevel=2)
            return path
        aside = move_aside(path)
        if aside is None:  # another rank of the same run set it aside first
            continue
        warnings.warn(f"checkpoint {path} is truncated or corrupted; set aside as {aside.name}.", stacklevel=2)
    if any(ckpt_dir.glob(f"{name}*.corrupt-*")):
        warnings.warn(f"no complete checkpoint left in {ckpt_dir}; training starts from step 0.", stacklevel=2)
    return None


class ValidatedCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose step checkpoints wait for the validation of the same step.

    Lightning saves ``every_n_train_steps`` checkpoints at the end of the training step, before that
    step's validation, and a run resumed from such a checkpoint skips that validation: a run killed
    during validation would lose the point from its curve. At a step that validates, this callback
    saves after the validation instead (Lightning's own deferred save), so every resume point is
    either between validations or after one.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0 and _validates_at(trainer, trainer.global_step):
            self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _validates_at(trainer: pl.Trainer, step: int) -> bool:
    interval = trainer.val_check_interval
    return (trainer.check_val_every_n_epoch is None and isinstance(interval, int) and interval > 0
            and step % interval == 0 and trainer.limit_val_batches != 0)


class _Interrupted(Exception):
    """Raised inside ``trainer.fit`` after the interrupt checkpoint was written (Lightning re-raises it)."""


class GracefulInterrupt(Callback):
    """The first Ctrl-C sets a flag; the next train step end saves ``last.ckpt`` and stops the fit.

    A second Ctrl-C interrupts at once (the default handler is back after the first).
    """

    def __init__(self, ckpt_path: Optional[Path] = None) -> None:
        self.ckpt_path = None if ckpt_path is None else Path(ckpt_path)
        self.requested = False
        self.saved: Optional[Path] = None
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:  # noqa: ANN001
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.requested:
            path = self.ckpt_path or checkpoint_dir(trainer) / "last.ckpt"
            trainer.save_checkpoint(path)
            self.saved = path
            raise _Interrupted()

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.requested:
            raise _Interrupted()  # the last periodic checkpoint is the resume point


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else ``<log dir>/checkpoints``."""
    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "dirpath", None):
        return Path(cb.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


#: the checkpoint the last interrupted fit saved (for the command line's resume hint)
LAST_INTERRUPT_CHECKPOINT: Optional[Path] = None


def _remove_logs_of_failed_start(trainer: pl.Trainer, ckpt_dir: Path) -> None:
    """A fit that failed before its first checkpoint leaves nothing to resume: delete the log folders
    it created inside its run folder (``ckpt_dir``'s parent), so a failed start leaves no ``tb/``."""
    import shutil

    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        return
    run = ckpt_dir.parent.resolve()
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if not log_dir:
            continue
        folder = Path(log_dir).resolve()
        if run in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)
            for parent in folder.parents:  # the now empty tb/ above version_0, up to the run folder
                if parent == run or any(parent.iterdir()):
                    break
                parent.rmdir()
    for folder in (ckpt_dir, run):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def fit_resumable(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, ckpt_dir: Optional[Path],
                  ckpt_path: Optional[str] = None) -> None:
    """``trainer.fit`` from ``ckpt_path``, else from the newest complete checkpoint in ``ckpt_dir``.

    Ctrl-C saves ``last.ckpt`` (in ``ckpt_dir``, else the run's checkpoint folder) at the next step
    boundary and raises ``KeyboardInterrupt``; :data:`LAST_INTERRUPT_CHECKPOINT` names the file.
    """
    global LAST_INTERRUPT_CHECKPOINT
    LAST_INTERRUPT_CHECKPOINT = None
    if ckpt_path is None and ckpt_dir is not None:
        found = resume_checkpoint(Path(ckpt_dir))
        ckpt_path = None if found is None else str(found)
    guard = GracefulInterrupt(None if ckpt_dir is None else Path(ckpt_dir) / "last.ckpt")
    trainer.callbacks.append(guard)
    trainer.callbacks.extend(faults.training_hooks())
    if trainer.world_size == 1:  # several ranks would reach the step boundary at different steps
        guard.install()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except _Interrupted:
        LAST_INTERRUPT_CHECKPOINT = guard.saved
        raise KeyboardInterrupt from None
    except SystemExit as e:  # Lightning answers a KeyboardInterrupt with sys.exit(1)
        if guard.requested or trainer.state.status == "interrupted":
            raise KeyboardInterrupt from None
        raise e
    except Exception:
        if ckpt_dir is not None:
            _remove_logs_of_failed_start(trainer, Path(ckpt_dir))
        raise
    finally:
        guard.uninstall()
        trainer.callbacks.remove(guard)
        # Lightning ignores SIGINT while it shuts down after an interrupt; give Ctrl-C back
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
