"""Set a damaged file aside instead of deleting it: ``NAME`` becomes ``NAME.corrupt-N``, the first
free ``N``, so what was there stays for inspection and the next run rebuilds the entry. Used by the
stage caches (:mod:`~lightning_ssl_backdoor.data.cache_entry`) and the checkpoint resume
(:mod:`~lightning_ssl_backdoor.checkpoint_io`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["move_aside"]


def move_aside(path: Path) -> Optional[Path]:
    """Rename ``path`` to ``NAME.corrupt-N`` (the first free ``N``, atomically with ``os.replace``);
    the new path, or ``None`` when ``path`` vanished meanwhile (another worker set it aside first)."""
    path = Path(path)
    n = 0
    while path.with_name(f"{path.name}.corrupt-{n}").exists():
        n += 1
    aside = path.with_name(f"{path.name}.corrupt-{n}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    return aside
