"""Named components and the data / trainer settings one training row uses.

These are plain dataclasses shared by the experiment runner (:mod:`lightning_ssl_backdoor.pipeline`)
and by the defenses below it, so neither has to import the other to speak about a row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass
class DataConfig:
    """Arguments of :class:`lightning_ssl_backdoor.data.SSLDataModule` (minus the seed)."""

    dataset: str = "digits"
    root: Optional[str] = None
    image_size: int = 16
    # 1 or 3; None keeps the dataset's own (digits: 1 grey channel). Models take in_channels from it.
    channels: Optional[int] = None
    num_labeled: Optional[int] = None
    labels_per_class: Optional[int] = 5
    num_unlabeled: Optional[int] = None
    include_labeled_in_unlabeled: bool = False
    batch_size: int = 32
    mu: int = 7
    eval_batch_size: int = 512
    num_workers: int = 0
    # classes and per-class labeled / unlabeled / test counts (lightning_ssl_backdoor.data.subset)
    subset: Optional[dict] = None
    # where decoded file-based data sets are cached (None: $SSL_BACKDOOR_CACHE or ~/.cache/...)
    cache_dir: Optional[str] = None


@dataclass
class TrainerConfig:
    """The Lightning Trainer settings a row uses (iteration-based)."""

    max_steps: int = 500
    val_check_interval: int = 100
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 25
    checkpoint_every_n_steps: int = 100


@dataclass
class Spec:
    """A named component with keyword arguments (algorithm, attack or defense)."""

    name: str
    init_args: dict = field(default_factory=dict)
    label: Optional[str] = None

    @property
    def display(self) -> str:
        return self.label or self.name


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (dataclasses are converted)."""

    def norm(p: Any) -> Any:
        if hasattr(p, "__dataclass_fields__"):
            return asdict(p)
        return p

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
