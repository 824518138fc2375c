"""What a PoisonedSplit artifact fixes, checked against the data config that names it.

A poisoned-split artifact (``ssl-backdoor poison``) carries its own split: its label budget, image
size, channels and classes were fixed when it was made. A data config that names the artifact
(``poisoned_split: FILE``) and also sets one of these either agrees with the artifact or the run
stops before any work with one sentence saying that the artifact wins and how to change either side.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from lightning_ssl_backdoor.data.split import SSLSplit
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["check_artifact_agrees"]


def _refuse(path: str, what: str, made: object, given: object, option: str) -> None:
    raise ConfigError(
        f"poisoned_split {path} was made with {what} {made} but data.{option} is {given}; the artifact's split "
        f"wins: drop data.{option} (or set it to {made}), or make a new artifact with "
        f"`ssl-backdoor poison --data.{option} {given}`."
    )


def check_artifact_agrees(split: SSLSplit, path: str, *, image_size: Optional[int] = None,
                          channels: Optional[int] = None, num_labeled: Optional[int] = None,
                          labels_per_class: Optional[int] = None,
                          classes: Optional[Sequence[str]] = None) -> None:
    """Raise a one-sentence :class:`ConfigError` where a set option disagrees with the artifact."""
    side = int(split.test.images.shape[-1])
    if image_size is not None and side != int(image_size):
        _refuse(path, "images of side", side, image_size, "image_size")
    made_channels = int(split.test.images.shape[1])
    if channels is not None and made_channels != int(channels):
        _refuse(path, "channels", made_channels, channels, "channels")
    labels = [int(y) for y in split.labeled.labels.tolist()]
    if num_labeled is not None and len(labels) != int(num_labeled):
        _refuse(path, "labeled images", len(labels), num_labeled, "num_labeled")
    if labels_per_class is not None:
        counts = set(Counter(labels).values())
        made = counts.pop() if len(counts) == 1 else f"{min(counts | {0})}-{max(counts | {0})}"
        if made != int(labels_per_class):
            _refuse(path, "labels per class", made, labels_per_class, "labels_per_class")
    if classes is not None and list(classes) != list(split.test.classes):
        _refuse(path, "classes", list(split.test.classes), list(classes), "subset.classes")
