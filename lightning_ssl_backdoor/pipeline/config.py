"""Typed experiment configuration (parsed by jsonargparse: YAML plus dotted command-line overrides).

A config names one data setting and lists of algorithms, attacks, defenses and seeds; the runner
expands the lists into rows (algorithm x attack x defense x seed), each an independent run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lightning_ssl_backdoor.errors import ConfigError


@dataclass
class DataConfig:
    """Arguments of :class:`lightning_ssl_backdoor.data.SSLDataModule` (minus the seed)."""

    dataset: str = "digits"
    root: Optional[str] = None
    image_size: int = 16
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


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seeds: list[int] = field(default_factory=lambda: [0])
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: dict = field(default_factory=dict)
    # each entry: a name, or {name, init_args, label} (a Spec); attacks/defenses also null = none
    algorithms: list[Any] = field(default_factory=lambda: ["fixmatch"])
    attacks: list[Any] = field(default_factory=lambda: [None])
    defenses: list[Any] = field(default_factory=lambda: [None])
    surrogate: dict = field(default_factory=dict)
    # where every row's model starts: None (random initialisation), "surrogate" (the attacker's
    # theta_0 of ``surrogate``, as the victim of Yan et al.'s code) or a weights file
    warm_start: Optional[str] = None
    # explicit rows instead of the full algorithm x attack x defense product: each entry names an
    # algorithm / attack / defense of the lists above by its label or name (null = none; an omitted
    # algorithm means the first one); every entry runs for every seed
    rows: Optional[list[dict]] = None
    # rows trained at once in separate processes (each with ``threads`` torch threads)
    jobs: int = 1
    dynamics_every: Optional[int] = None
    threads: Optional[int] = None
    output: Optional[str] = None

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed.")
        if not self.algorithms:
            raise ConfigError("algorithms must list at least one algorithm.")
        if self.trainer.max_steps < 1:
            raise ConfigError("trainer.max_steps must be >= 1.")
        if not self.attacks:
            self.attacks = [None]
        if not self.defenses:
            self.defenses = [None]
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigError(f"jobs must be a positive integer, got {self.jobs!r}.")
        for entry in self.rows or []:
            if not isinstance(entry, dict) or not set(entry) <= {"algorithm", "attack", "defense"}:
                raise ConfigError(
                    f"each entry of rows is a mapping with keys algorithm / attack / defense, got {entry!r}."
                )


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (dataclasses are converted)."""

    def norm(p: Any) -> Any:
        if hasattr(p, "__dataclass_fields__"):
            return asdict(p)
        return p

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
