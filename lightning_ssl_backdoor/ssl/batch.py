"""The batch layout the SSL modules read, and its check (the layout itself: :mod:`.base`'s docstring).

:func:`check_batch_layout` runs in ``SSLModule.on_before_batch_transfer``, so a loader of another
form (``(x, y)`` tuples, float images, missing indices) is refused in one sentence before the first
step instead of failing deep inside the augmentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Sequence

import torch

from lightning_ssl_backdoor.errors import DataFormatError

#: the batch layout in one line, for error messages (details: the docstring of ssl/base.py)
BATCH_LAYOUT = (
    "training {'labeled': {'x', 'y', 'idx'}, 'unlabeled': {'x', 'idx'}}, evaluation {'x', 'y', 'idx'[, 'x_trig']}, "
    "images uint8 [B, C, H, W], y and idx int64 [B]"
)


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, Mapping):
        return f"a mapping with keys {sorted(map(str, value))}"
    return f"a {type(value).__name__}"


def _check_part(part: Any, where: str, keys: Sequence[str]) -> Optional[str]:
    """What is wrong with one image dict of a batch (``None`` when it fits)."""
    if not isinstance(part, Mapping):
        return f"{where} is {_describe(part)}"
    missing = [k for k in keys if k not in part]
    if missing:
        return f"{where} lacks {', '.join(repr(k) for k in missing)} (it has {sorted(map(str, part))})"
    x = part["x"]
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.ndim == 4):
        return f"{where}['x'] is {_describe(x)}, not uint8 [B, C, H, W]"
    for k in ("y", "idx"):
        if k in keys and not (torch.is_tensor(part[k]) and not part[k].is_floating_point() and part[k].ndim == 1):
            return f"{where}[{k!r}] is {_describe(part[k])}, not int64 [B]"
    return None


def check_batch_layout(batch: Any) -> None:
    """Raise :class:`DataFormatError` (one sentence) unless ``batch`` has the layout of the module
    docstring: a training dict (``"labeled"`` / ``"unlabeled"``) or an evaluation dict (``"x"``)."""
    if isinstance(batch, Mapping) and "labeled" in batch:
        problem = _check_part(batch["labeled"], "batch['labeled']", ("x", "y", "idx"))
        if problem is None and "unlabeled" in batch:
            problem = _check_part(batch["unlabeled"], "batch['unlabeled']", ("x", "idx"))
    elif isinstance(batch, Mapping):
        problem = _check_part(batch, "the batch", ("x", "y"))
    else:
        problem = f"the batch is {_describe(batch)}"
    if problem is not None:
        raise DataFormatError(
            f"SSL modules take dict batches ({BATCH_LAYOUT}) but {problem}: load data with "
            "lightning_ssl_backdoor.data.SSLDataModule or yield that layout (docs/reuse.md, 'Batch layout')."
        )
