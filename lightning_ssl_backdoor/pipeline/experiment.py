"""``ssl-backdoor experiment``: data -> split -> attack -> data defenses -> training -> evaluation -> report.

Each stage's output is cached under ``OUTPUT/cache`` keyed by a hash of everything that determines
it, so re-running (or changing only a later stage) reuses earlier stages, and an interrupted run
resumes (training restarts from its last checkpoint). Rows (algorithm x attack x defense x seed) are
independent, so several processes or GPUs can take rows of one grid in parallel (``--rows``).
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_ssl_backdoor import __version__
from lightning_ssl_backdoor.data import SSLSplit, make_split
from lightning_ssl_backdoor.data.artifacts import sha256_array
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.config import DataConfig, ExperimentConfig, Spec, TrainerConfig, config_hash
from lightning_ssl_backdoor.pipeline.training import train_row


def load_clean_split(cfg: ExperimentConfig, seed: int) -> SSLSplit:
    from lightning_ssl_backdoor.data.readers import load_dataset

    d = cfg.data
    train = load_dataset(d.dataset, "train", root=d.root, image_size=d.image_size)
    test = load_dataset(d.dataset, "test", root=d.root, image_size=d.image_size)
    return make_split(
        train,
        test,
        num_labeled=d.num_labeled,
        labels_per_class=None if d.num_labeled is not None else d.labels_per_class,
        include_labeled_in_unlabeled=d.include_labeled_in_unlabeled,
        seed=seed,
        num_unlabeled=d.num_unlabeled,
    )


def split_key(cfg: ExperimentConfig, seed: int) -> str:
    d = cfg.data
    return config_hash(
        "split", d.dataset, d.root, d.image_size, d.num_labeled, d.labels_per_class,
        d.num_unlabeled, d.include_labeled_in_unlabeled, seed,
    )


def data_hashes(split: SSLSplit) -> dict[str, str]:
    return {
        name: sha256_array(getattr(split, name).images.numpy())
        for name in ("labeled", "unlabeled", "test")
    }


class Runner:
    """Runs the rows of one experiment config; every stage cached under ``output/cache``."""

    def __init__(self, cfg: ExperimentConfig, output: Path, progress: bool = True) -> None:
        cfg.validate()
        self.cfg, self.output, self.progress = cfg, output, progress
        self.cache = output / "cache"
        self._splits: dict[int, SSLSplit] = {}

    # ------------------------------------------------------------- stages
    def clean_split(self, seed: int) -> SSLSplit:
        if seed not in self._splits:
            self._splits[seed] = load_clean_split(self.cfg, seed)
        return self._splits[seed]

    def attacked_split(self, seed: int, attack: Optional[Spec]) -> tuple[SSLSplit, str]:
        base = split_key(self.cfg, seed)
        if attack is None:
            return self.clean_split(seed), base
        from lightning_ssl_backdoor.pipeline.attack_stage import run_attack_stage

        key = config_hash(base, "attack", asdict(attack), self.cfg.surrogate)
        split = run_attack_stage(
            self.clean_split(seed), attack, self.cfg.surrogate, seed,
            self.cache / f"attack-{key}", surrogate_dir=self.cache / f"surrogate-{config_hash(base, self.cfg.surrogate)}",
            progress=self.progress,
        )
        grid = self.output / f"examples_{_slug(attack.display)}.png"
        if not grid.is_file():
            from lightning_ssl_backdoor.report.figures import example_grid

            example_grid(split, grid)
        return split, key

    # --------------------------------------------------------------- rows
    def rows(self) -> list[tuple[Spec, Optional[Spec], Optional[Spec], int]]:
        c = self.cfg
        return list(itertools.product(c.algorithms, c.attacks, c.defenses, c.seeds))

    def run_row(self, algorithm: Spec, attack: Optional[Spec], defense: Optional[Spec], seed: int) -> dict[str, Any]:
        split, akey = self.attacked_split(seed, attack)
        tkey = config_hash(akey, "train", asdict(algorithm), self.cfg.model, asdict(self.cfg.data),
                           asdict(self.cfg.trainer), seed, None if defense is None else asdict(defense))
        if defense is not None:
            from lightning_ssl_backdoor.pipeline.defense_stage import DefenseContext, build_defense

            ctx = DefenseContext(split, seed, algorithm, self.cfg.model, self.cfg.data, self.cfg.trainer,
                                 self.cache / f"defense-{tkey}", progress=self.progress)
            res = build_defense(defense).run(ctx)
            return self.make_row(algorithm, attack, defense, seed, split, res, res.get("defense_info", {}), tkey)
        workdir = self.cache / f"train-{tkey}"
        callbacks = []
        if self.cfg.dynamics_every:
            from lightning_ssl_backdoor.pipeline.dynamics import TrainingDynamicsRecorder

            callbacks.append(TrainingDynamicsRecorder(self.cfg.dynamics_every, workdir / "dynamics.npz"))
        res = train_row(
            split, algorithm, self.cfg.model, self.cfg.data, self.cfg.trainer, seed,
            workdir, enable_progress_bar=self.progress, extra_callbacks=callbacks,
        )
        return self.make_row(algorithm, attack, defense, seed, split, res, {}, tkey)

    def make_row(self, algorithm, attack, defense, seed, split, res, defense_info, tkey) -> dict[str, Any]:
        t = res["test"]
        best = "_ema" if res.get("has_ema") else ""

        def pct(k: str) -> Optional[float]:
            return None if k not in t else round(100.0 * t[k], 2)

        poisoned = getattr(split, "unlabeled_poison_mask", None)
        row = {
            "algorithm": algorithm.display,
            "attack": None if attack is None else attack.display,
            "defense": None if defense is None else defense.display,
            "seed": seed,
            "evaluated_weights": "ema" if best else "raw",
            "clean_accuracy": pct("acc" + best),
            "asr": pct("asr" + best),
            "asr_conditioned": pct("asr_cond" + best),
            "clean_accuracy_raw": pct("acc"),
            "asr_raw": pct("asr"),
            "asr_conditioned_raw": pct("asr_cond"),
            # targeted attacks (Carlini): 100 when the chosen test image x* is predicted as the target
            "targeted_success": pct("targeted" + best),
            "target": getattr(split, "target", None),
            "num_labeled": len(split.labeled),
            "num_unlabeled": len(split.unlabeled),
            "num_poisons": None if poisoned is None else int(poisoned.sum()),
            "steps": res["steps"],
            "fit_seconds": round(res["fit_seconds"], 1),
            "history": res["history"],
            # shares of poisoned / clean unlabeled samples pseudo-labelled as the target and passing
            # the confidence mask, over the last validation interval
            "backdoor_stats": {k.split("/", 1)[1]: round(100 * v, 2) for k, v in (res["history"][-1] if res["history"] else {}).items()
                               if k.startswith("backdoor/")},
            "defense_info": defense_info,
            "data_hashes": data_hashes(split),
            "cache_key": tkey,
        }
        return row

    def run(self, only: Optional[list[int]] = None) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        rows = self.rows()
        chosen = [i for i in range(len(rows)) if only is None or i in only]
        out = []
        bar = tqdm(chosen, desc="experiment rows", disable=not self.progress, file=sys.stderr)
        for i in bar:
            algorithm, attack, defense, seed = rows[i]
            t0 = time.perf_counter()
            row = self.run_row(algorithm, attack, defense, seed)
            out.append(row)
            tqdm.write(
                f"[{i + 1}/{len(rows)}] {row['algorithm']} | attack={row['attack']} | defense={row['defense']} | "
                f"seed={seed}: CA {row['clean_accuracy']}%  ASR {row['asr']}%  ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
        return out


def experiment_main(argv: list[str]) -> int:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="ssl-backdoor experiment",
        description="Run attack -> defense -> SSL training -> evaluation and write the report.",
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="experiment YAML")
    parser.add_class_arguments(ExperimentConfig, None, fail_untyped=False)
    parser.add_argument("--rows", type=Optional[list[int]], default=None, help="run only these row numbers (0-based)")
    parser.add_argument("--no_progress", type=bool, default=False, help="hide progress bars")
    ns = parser.parse_args(argv)
    cfg = config_from_dict(ns.as_dict())
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    output = Path(cfg.output or Path("runs") / cfg.name)
    t0 = time.perf_counter()
    runner = Runner(cfg, output, progress=not ns.no_progress)
    rows = runner.run(ns.rows)
    from lightning_ssl_backdoor.report.tables import write_report

    paths = write_report(rows, cfg, output, elapsed=time.perf_counter() - t0, version=__version__)
    print(paths["table"])
    print(f"\nreport: {paths['md']}  (results.json, results.csv and figures beside it)")
    return 0


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from parsed (or hand-written) nested dicts."""
    fields = {k: d[k] for k in ExperimentConfig.__dataclass_fields__ if k in d and d[k] is not None}
    if isinstance(fields.get("data"), dict):
        fields["data"] = DataConfig(**fields["data"])
    if isinstance(fields.get("trainer"), dict):
        fields["trainer"] = TrainerConfig(**fields["trainer"])
    cfg = ExperimentConfig(**fields)
    cfg.algorithms = [_spec(a) for a in cfg.algorithms]
    cfg.attacks = [None if a is None else _spec(a) for a in cfg.attacks]
    cfg.defenses = [None if x is None else _spec(x) for x in cfg.defenses]
    return cfg


def _spec(x: Any) -> Spec:
    if isinstance(x, Spec):
        return x
    if isinstance(x, str):
        return Spec(name=x)
    if isinstance(x, dict):
        x = {k: v for k, v in x.items() if k != "class_path"}
        return Spec(name=x["name"], init_args=dict(x.get("init_args") or {}), label=x.get("label"))
    raise ConfigError(f"cannot read {x!r} as a component; write a name or {{name: ..., init_args: {{...}}}}.")
