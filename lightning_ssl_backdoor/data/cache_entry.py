"""Self-healing cache entries: an entry that cannot be read or does not hold what it should is set
aside (renamed ``NAME.corrupt-N``, kept for inspection) with a one-line warning naming it, and the
caller rebuilds it, as if it had never been written.

Every stage of an experiment caches its result in ``OUTPUT/cache/<stage>-<key>/`` (``metrics.json``
of a training row, ``poisoned.npz`` of an attack, ``surrogate.safetensors``, a defense's
``*.json``). They are written atomically, so a damaged entry means a copied-in, truncated or
hand-edited file; it must never stop every later run with an error about the cache itself.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from lightning_ssl_backdoor.quarantine import move_aside


def set_aside(path: Path, why: str) -> Optional[Path]:
    """Rename ``path`` to ``NAME.corrupt-N`` (the first free N) and warn, naming both and ``why``.

    Returns the new path, or ``None`` when the file vanished meanwhile (another worker set it aside).
    """
    path = Path(path)
    aside = move_aside(path)
    if aside is None:
        return None
    warnings.warn(f"cache entry {path} is unusable ({why}); set aside as {aside.name} and rebuilt.", stacklevel=3)
    return aside


def read_json_entry(path: Path, valid: Optional[Callable[[Any], bool]] = None) -> Optional[Any]:
    """The JSON content of the cache entry ``path``; ``None`` when it does not exist, or when it is
    unreadable, not JSON, or ``valid(content)`` is false (then it is set aside: :func:`set_aside`)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        if not path.is_file():
            raise ValueError("not a regular file")
        value = json.loads(path.read_text(encoding="utf-8"))
        if valid is not None and not valid(value):
            raise ValueError("its content is not of the expected form")
    except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as exc:
        why = f"invalid JSON: {exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        set_aside(path, why)
        return None
    return value


def is_row_result(value: Any) -> bool:
    """Whether ``value`` looks like a training row's ``metrics.json`` (pipeline/training.train_row)."""
    return (isinstance(value, dict) and isinstance(value.get("test"), dict)
            and isinstance(value.get("history"), list) and isinstance(value.get("steps"), int)
            and all(isinstance(v, (int, float)) for v in value["test"].values()))


def is_history(value: Any) -> bool:
    """Whether ``value`` is a validation history: a list of mappings, each with an int ``step``."""
    return isinstance(value, list) and all(isinstance(h, dict) and isinstance(h.get("step"), int) for h in value)
