"""Labels that index the class list: a split read from a file (a PoisonedSplit artifact) is refused
when any label lies outside ``0..C-1`` (``-1``, "unknown", is allowed only for unlabeled images and
their hidden true labels), so an evaluation never silently scores every test image as wrong (a test label of -3 or 12 for a
10-class split reads as accuracy 0.0)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from lightning_ssl_backdoor.errors import ArtifactError


def _bad(labels: Optional[torch.Tensor], low: int, num_classes: int) -> Optional[tuple[int, int]]:
    if labels is None or labels.numel() == 0:
        return None
    lo, hi = int(labels.min()), int(labels.max())
    return (lo, hi) if lo < low or hi >= num_classes else None


def check_split_labels(split, where: Path | str) -> None:
    """Raise :class:`ArtifactError` naming ``where`` when a label of ``split`` is out of range."""
    n = split.num_classes
    if n < 1:
        raise ArtifactError(f"{where} names no classes; regenerate it with this package.")
    parts = (("test labels", split.test.labels, 0), ("labeled labels", split.labeled.labels, 0),
             ("unlabeled labels", split.unlabeled.labels, -1),
             ("unlabeled true labels", split.unlabeled.true_labels, -1),  # STL-10: unknown
             ("test true labels", split.test.true_labels, 0))
    for what, labels, low in parts:
        bad = _bad(labels, low, n)
        if bad is not None:
            allowed = f"-1..{n - 1}" if low < 0 else f"0..{n - 1}"
            raise ArtifactError(f"{where}: {what} lie in [{bad[0]}, {bad[1]}], outside {allowed} for its {n} "
                                "classes; the artifact is corrupted or was edited: regenerate it.")
