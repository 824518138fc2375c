"""Exceptions raised on bad input or on a fault at run time.

Every exception carries one sentence that says what is wrong and how to fix it; the command line
prints that sentence (no traceback) and exits with the class's ``exit_code``: 2 when the command,
its config or a file it names is wrong (fix the input), 1 when the run failed for a reason outside
the input (the output folder is in use, the disk is full, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator

EXIT_FAULT = 1  # a fault at run time: fix the environment and rerun the same command
EXIT_USAGE = 2  # a bad command, config or input file: fix it
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell's convention


class SSLBackdoorError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = EXIT_USAGE


class ConfigError(SSLBackdoorError, ValueError):
    """A configuration value is invalid or inconsistent."""


class DataFormatError(SSLBackdoorError, ValueError):
    """A data file is missing, malformed or not in the expected layout."""


class ArtifactError(SSLBackdoorError, ValueError):
    """A saved artifact is missing, corrupted, or its hashes do not match its manifest."""


class CheckpointError(ArtifactError):
    """A checkpoint is unreadable (truncated, corrupted) or holds objects that are not plain data."""


class TrainingDiverged(ConfigError):
    """The training loss became NaN or infinite (a learning rate too high, a value that is not finite)."""


class RunFault(SSLBackdoorError, RuntimeError):
    """The run cannot go on for a reason outside its input (exit code 1)."""

    exit_code = EXIT_FAULT


class OutputLockedError(RunFault):
    """Another live process is writing the same output folder."""


def describe_exception(e: BaseException) -> str:
    """A short phrase for an exception raised while interpreting a file's content."""
    if isinstance(e, KeyError):
        return f"missing entry {e.args[0]!r}" if e.args else "a missing entry"
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON: {e.msg} at line {e.lineno}"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def malformed(path: str | os.PathLike, what: str = "file", error: type = ArtifactError) -> Iterator[None]:
    """Turn a failure to interpret ``path``'s content into one sentence.

    Wrap the code that reads the *structure* of a file (manifest keys, metadata entries, array
    names): a ``KeyError``, ``TypeError``, ``ValueError``, ``IndexError`` or ``AttributeError`` in
    there means the file is malformed, whatever field was missing, and becomes ``error``.
    """
    try:
        yield
    except SSLBackdoorError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise error(
            f"{what} {os.fspath(path)} is malformed ({describe_exception(e)}); "
            "regenerate it with this package or pass a file it wrote."
        ) from None
