"""Small shared helpers."""

from __future__ import annotations

import logging
import warnings


def quiet_lightning() -> None:
    """Silence Lightning messages that are expected by design here and only confuse users.

    Our loaders are IterableDatasets that shard themselves (so ``__len__`` is exact per worker), and
    augmentation deliberately lives in the LightningModule's ``on_after_batch_transfer`` (batch
    handling in its ``on_before_batch_transfer``).
    """
    for pattern in (
        r".*IterableDataset.*has `__len__` defined.*",
        r".*overridden `on_after_batch_transfer`.*",
        r".*overridden `on_before_batch_transfer`.*",
        r".*does not have many workers.*",
        r".*LeafSpec.*",
        r".*GPU available but not used.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_TipFilter())


class _TipFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "litlogger" not in msg and "Tip:" not in msg
