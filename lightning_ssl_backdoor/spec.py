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
    """Arguments of :class:`lightning_ssl_backdoor.data.SSLDataModule` (minus the seed).

    Args:
        dataset: digits (bundled), cifar10, cifar100, svhn, stl10 or folder.
        root: folder holding the dataset files (not needed for digits).
        image_size: side length images are resized to, in pixels.
        channels: 1 or 3; null keeps the dataset's own (digits: 1 grey channel).
        num_labeled: total labeled images (class-balanced); overrides labels_per_class.
        labels_per_class: labeled images per class.
        num_unlabeled: cap on the unlabeled pool (reduced-scale runs).
        include_labeled_in_unlabeled: also put the labeled images in the unlabeled pool.
        batch_size: labeled images per step (the unlabeled batch is mu * batch_size).
        mu: unlabeled-to-labeled batch ratio.
        eval_batch_size: images per evaluation batch.
        num_workers: data loader worker processes.
        subset: classes and per-class labeled / unlabeled / test counts.
        cache_dir: where decoded file-based data sets are cached (null: $SSL_BACKDOOR_CACHE or ~/.cache).
    """

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
    """The Lightning Trainer settings a row uses (iteration-based).

    Args:
        max_steps: training steps of every row.
        val_check_interval: evaluate (CA, ASR, backdoor statistics) every N steps.
        accelerator: Lightning accelerator: auto, cpu, gpu, cuda or mps.
        devices: devices per row: a count, a list of indices, or -1 for all.
        strategy: Lightning strategy: auto, ddp, ...
        precision: Lightning precision: 32-true, 16-mixed, bf16-mixed, ...
        log_every_n_steps: TensorBoard logging interval in steps.
        checkpoint_every_n_steps: resumable checkpoint interval in steps.
        sync_batchnorm: synchronise BatchNorm statistics across DDP ranks (SyncBatchNorm).
    """

    max_steps: int = 500
    val_check_interval: int = 100
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 25
    checkpoint_every_n_steps: int = 100
    sync_batchnorm: bool = False


@dataclass
class Spec:
    """A named component with keyword arguments (algorithm, attack or defense)."""

    name: str
    init_args: dict = field(default_factory=dict)
    label: Optional[str] = None

    @property
    def display(self) -> str:
        return self.label or self.name


#: options added after cache keys were first computed: left out of a key while at these defaults,
#: so caches made before they existed stay valid
LATE_DEFAULTS = {"sync_batchnorm": False}


def key_fields(cfg: Any) -> dict:
    """A config dataclass as it enters a cache key (:data:`LATE_DEFAULTS` left out at their defaults)."""
    return {k: v for k, v in asdict(cfg).items() if not (k in LATE_DEFAULTS and v == LATE_DEFAULTS[k])}


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (dataclasses are converted)."""

    def norm(p: Any) -> Any:
        if hasattr(p, "__dataclass_fields__"):
            return asdict(p)
        return p

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
