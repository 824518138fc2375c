"""Typed experiment configuration (parsed by jsonargparse: YAML plus dotted command-line overrides).

A config names one data setting and lists of algorithms, attacks, defenses and seeds; the runner
expands the lists into rows (algorithm x attack x defense x seed), each an independent run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig, config_hash

__all__ = ["DataConfig", "ExperimentConfig", "Spec", "TrainerConfig", "config_hash"]


@dataclass
class ExperimentConfig:
    """One experiment: a data setting, lists of components and seeds, expanded into rows.

    Args:
        name: experiment name, a slug: the report goes to runs/NAME unless --output is given.
        seeds: seeds of the rows; each fixes split, poisons, augmentation and initialisation (0 <= s < 2**32).
        data: the data setting (SSLDataModule's options): dataset, sizes, label budget, batches.
        trainer: the Lightning Trainer settings of every row (steps, evaluation interval, device).
        model: the algorithm's constructor options (SSLModule's and the algorithm's own); --model.KEY sets one.
        algorithms: SSL algorithms, each a name or {name, init_args, label}.
        attacks: attacks, each null (no attack), a name or {name, init_args, label}.
        defenses: defenses, each null (no defense), a name or {name, init_args, label}.
        surrogate: the attacker's theta_0: train_surrogate's options, or checkpoint: FILE.
        warm_start: where every row's model starts: null (random), surrogate (theta_0) or a weights file.
        rows: explicit rows [{algorithm, attack, defense}] instead of the full product, each for every seed.
        jobs: rows trained at once, each in its own process (1 with DDP).
        dynamics_every: record the unlabeled set's predictions every N steps (training dynamics).
        threads: torch threads per row (null: torch's default).
        probe: opt-in "what was learned" probe at every evaluation: {attack, images, views}.
        output: report folder (default runs/NAME).
    """

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
    # opt-in "what was learned" probe at every evaluation (issue 36; pipeline/probe_stage.py):
    # {attack: <a DeNeB attack's label>, images: N, views: K}; None (default) adds nothing
    probe: Optional[dict] = None
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
