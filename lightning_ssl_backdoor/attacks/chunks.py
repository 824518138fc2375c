"""Resumable chunked work: finished chunks of a long optimisation are saved as artifacts.

``ChunkStore(folder)`` keeps ``chunk_<i>.npz`` (+ manifest) per finished chunk, keyed by a string
that identifies the work (attack config hash and chunk range); a rerun after an interruption loads
the finished chunks and recomputes only the rest. Because every random draw of the attacks is made
up front from the attack's seeded generator, the resumed result equals an uninterrupted one.
A missing, partial or corrupted chunk is simply recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from lightning_ssl_backdoor.data.artifacts import load_arrays, save_arrays
from lightning_ssl_backdoor.errors import ArtifactError


class ChunkStore:
    def __init__(self, folder: Optional[str | Path]) -> None:
        self.folder = None if folder is None else Path(folder)

    def _path(self, name: str, i: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{name}_chunk_{i:05d}.npz"

    def load(self, name: str, i: int, key: str) -> Optional[Dict[str, torch.Tensor]]:
        """The arrays of chunk ``i`` of ``name`` if it was finished with the same ``key``."""
        if self.folder is None:
            return None
        path = self._path(name, i)
        if not path.is_file():
            return None
        try:
            arrays, meta = load_arrays(path)
        except ArtifactError:
            return None
        if meta.get("key") != key:
            return None
        return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}

    def save(self, name: str, i: int, key: str, arrays: Dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        save_arrays(self._path(name, i), {k: v.detach().cpu() for k, v in arrays.items()}, {"key": key})
