"""``ssl-backdoor experiment``: data -> split -> attack -> data defenses -> training -> evaluation -> report.

Each stage's output is cached under ``OUTPUT/cache`` keyed by a hash of everything that determines
it, so re-running (or changing only a later stage) reuses earlier stages, and an interrupted run
resumes (training restarts from its last checkpoint). Rows (algorithm x attack x defense x seed) are
independent, so several processes or GPUs can take rows of one grid in parallel (``--only``;
``jobs`` > 1 runs several rows at once on one machine).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from lightning_ssl_backdoor import __version__
from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.data.artifacts import sha256_array, sha256_file
from lightning_ssl_backdoor.data.readers import load_dataset
from lightning_ssl_backdoor.data.subset import subset_split
from lightning_ssl_backdoor.defenses import TrainingDynamicsRecorder, build_defense
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.io_lock import locked_output, waiting_lock
from lightning_ssl_backdoor.pipeline.attack_stage import run_attack_stage, surrogate_model
from lightning_ssl_backdoor.pipeline.base_rate import attack_base_rates
from lightning_ssl_backdoor.pipeline import jobs
from lightning_ssl_backdoor.pipeline.build import built_arguments, config_from_dict, config_yaml, parse_experiment
from lightning_ssl_backdoor.pipeline.checks import check_experiment, check_name
from lightning_ssl_backdoor.pipeline.config import ExperimentConfig, Spec, config_hash
from lightning_ssl_backdoor.spec import key_fields
from lightning_ssl_backdoor.pipeline.defense_stage import defense_context
from lightning_ssl_backdoor.pipeline.distributed import is_global_zero
from lightning_ssl_backdoor.pipeline.finite import finite_numbers
from lightning_ssl_backdoor.pipeline.probe_stage import probe_callback
from lightning_ssl_backdoor.pipeline.results_merge import grid_keys, merge_rows
from lightning_ssl_backdoor.pipeline.training import train_row
from lightning_ssl_backdoor.pipeline.validate import validate_ranges
from lightning_ssl_backdoor.report.figures import example_grid
from lightning_ssl_backdoor.pipeline.display import write_experiment_report as write_report

__all__ = ["Runner", "config_from_dict", "data_hashes", "experiment_main", "load_clean_split", "split_key"]


def load_clean_split(cfg: ExperimentConfig, seed: int) -> SSLSplit:
    d = cfg.data
    opts = dict(root=d.root, image_size=d.image_size, channels=d.channels, cache_dir=d.cache_dir)
    train = load_dataset(d.dataset, "train", **opts)
    test = load_dataset(d.dataset, "test", **opts)
    return subset_split(
        train,
        test,
        d.subset,
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
        *([d.subset] if d.subset else []),
        # "grey-default": digits became 1-channel by default, so caches of 3-channel splits differ;
        # the other data sets' keys change only when channels is set
        *(["channels", d.channels, "grey-default"] if d.dataset == "digits" or d.channels is not None else []),
    )


def data_hashes(split: SSLSplit) -> dict[str, str]:
    return {
        name: sha256_array(getattr(split, name).images.numpy())
        for name in ("labeled", "unlabeled", "test")
    }


def keyed_model_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """The model arguments as they enter a cache key: a warm-start weights file (``init_weights``)
    by the sha256 of its bytes, not its path, so a copied or moved output folder keeps its cache
    and a weights file rewritten in place invalidates the rows trained from it."""
    path = model_args.get("init_weights")
    if not path:
        return model_args
    return {**model_args, "init_weights": f"sha256:{sha256_file(path)}"}


class Runner:
    """Runs the rows of one experiment config; every stage cached under ``output/cache``."""

    def __init__(self, cfg: ExperimentConfig, output: Path, progress: bool = True) -> None:
        cfg.validate()
        check_experiment(cfg)
        validate_ranges(cfg)
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
        key = config_hash(base, "attack", asdict(attack), self.cfg.surrogate)
        split = run_attack_stage(
            self.clean_split(seed), attack, self.cfg.surrogate, seed,
            self.cache / f"attack-{key}", surrogate_dir=self.surrogate_dir(seed),
            progress=self.progress,
        )
        grid = self.output / f"examples_{_slug(attack.display)}.png"
        if not grid.is_file() and is_global_zero():
            example_grid(split, grid)
        return split, key

    def surrogate_dir(self, seed: int) -> Path:
        """Cache folder of the attacker's theta_0 for ``seed`` (shared by attacks and warm starts)."""
        return self.cache / f"surrogate-{config_hash(split_key(self.cfg, seed), self.cfg.surrogate)}"

    def surrogate_path(self, seed: int) -> Path:
        """The attacker's theta_0 for ``seed`` (trained on the labeled split once, then cached)."""
        if self.cfg.surrogate.get("checkpoint"):
            return Path(self.cfg.surrogate["checkpoint"])
        path = self.surrogate_dir(seed) / "surrogate.safetensors"
        # trains it once; a cached one is loaded, so a damaged file is set aside and retrained here
        surrogate_model(self.clean_split(seed), dict(self.cfg.surrogate), seed, path.parent, self.progress)
        return path

    def model_args(self, seed: int) -> dict[str, Any]:
        """The row's model arguments, with ``init_weights`` when ``warm_start`` asks for it."""
        ws = self.cfg.warm_start
        if not ws:
            return dict(self.cfg.model)
        path = self.surrogate_path(seed) if ws == "surrogate" else Path(ws)
        if not path.is_file():
            raise ConfigError(f"warm_start: {path} does not exist; give 'surrogate' or a weights file.")
        return {**self.cfg.model, "init_weights": str(path)}

    # --------------------------------------------------------------- rows
    def rows(self) -> list[tuple[Spec, Optional[Spec], Optional[Spec], int]]:
        """The grid's rows: the full product, or the config's explicit ``rows`` for every seed."""
        c = self.cfg
        if not c.rows:
            return list(itertools.product(c.algorithms, c.attacks, c.defenses, c.seeds))
        out = []
        for entry in c.rows:
            picked = (
                _pick(c.algorithms, entry.get("algorithm", c.algorithms[0].display), "algorithm", allow_none=False),
                _pick(c.attacks, entry.get("attack"), "attack"),
                _pick(c.defenses, entry.get("defense"), "defense"),
            )
            out.extend((*picked, seed) for seed in c.seeds)
        return out

    def train_key(self, akey: str, algorithm: Spec, model_args: dict[str, Any], seed: int,
                  defense: Optional[Spec] = None) -> str:
        """The cache key of a row's training (``cache/train-<key>/``): the attacked split's key,
        the algorithm, its keyed model arguments, the data and trainer settings, the seed and the
        defense (None: the undefended training)."""
        return config_hash(akey, "train", asdict(algorithm), keyed_model_args(model_args), asdict(self.cfg.data),
                           key_fields(self.cfg.trainer), seed, None if defense is None else asdict(defense))

    def run_row(self, algorithm: Spec, attack: Optional[Spec], defense: Optional[Spec], seed: int) -> dict[str, Any]:
        split, akey = self.attacked_split(seed, attack)
        model_args = self.model_args(seed)

        def train_key(d: Optional[Spec]) -> str:
            return self.train_key(akey, algorithm, model_args, seed, d)

        tkey = train_key(defense)
        if defense is not None:
            run = self.tensorboard_run(algorithm, attack, defense, seed)

            def train_named(*args, **kwargs):  # each model a defense trains: a run under the row's name
                workdir = Path(args[6] if len(args) > 6 else kwargs["workdir"])
                with self.training_lock(workdir):
                    return train_row(*args, **kwargs, tensorboard=(run[0], f"{run[1]}/{workdir.name}"))

            ctx = defense_context(split, seed, algorithm, model_args, self.cfg.data, self.cfg.trainer,
                                  self.cache / f"defense-{tkey}", progress=self.progress, trainer_fn=train_named,
                                  undefended_dir=self.cache / f"train-{train_key(None)}", tensorboard=run)
            res = build_defense(defense).run(ctx)
            return self.make_row(algorithm, attack, defense, seed, split, res, res.get("defense_info", {}), tkey)
        workdir = self.cache / f"train-{tkey}"
        callbacks = []
        if self.cfg.dynamics_every:
            callbacks.append(TrainingDynamicsRecorder(self.cfg.dynamics_every, workdir / "dynamics.npz"))
        if self.cfg.probe:  # opt-in (issue 36): trigger / perturbation / both at every evaluation
            callbacks.append(probe_callback(self, seed))
        clean_row = attack is None and any(a is not None for a in self.cfg.attacks)
        with self.training_lock(workdir):  # a model repair of this row may be training it in another worker
            res = train_row(
                split, algorithm, model_args, self.cfg.data, self.cfg.trainer, seed,
                workdir, enable_progress_bar=self.progress, extra_callbacks=callbacks,
                tensorboard=self.tensorboard_run(algorithm, attack, defense, seed), save_model=True,
            )
        row = self.make_row(algorithm, attack, defense, seed, split, res, {}, tkey)
        if clean_row and res.get("model_path"):
            row["base_rates"] = self.base_rates(split, seed, algorithm, model_args, res, workdir)
        return row

    def training_lock(self, workdir: Path):
        """One trainer at a time in ``workdir`` when rows train side by side (``jobs`` > 1): the
        undefended row and its model repairs share one training folder, and the later worker waits
        for it and finds it cached. One process (DDP included, which needs ``jobs: 1``) takes no lock."""
        return waiting_lock(workdir) if self.cfg.jobs > 1 else contextlib.nullcontext()

    def base_rates(self, split, seed, algorithm, model_args, res, workdir) -> dict[str, Any]:
        """Each attack's trigger on the no-attack model (:mod:`lightning_ssl_backdoor.pipeline.base_rate`)."""
        attacked = {a.display: self.attacked_split(seed, a)[0] for a in self.cfg.attacks if a is not None}

        def context(probe):
            return defense_context(probe, seed, algorithm, model_args, self.cfg.data, self.cfg.trainer,
                                   workdir / "base_rates", progress=False)

        return attack_base_rates(split, attacked, context(split).load_model(res).evaluated, context)

    def tensorboard_run(self, algorithm: Spec, attack: Optional[Spec], defense: Optional[Spec], seed: int) -> tuple[Path, str]:
        """(folder, run name) of a row's TensorBoard run: ``OUTPUT/tensorboard/<label>/seed<s>``,
        the label being algorithm__attack__defense (``tensorboard --logdir OUTPUT/tensorboard``)."""
        label = "__".join(_slug(x) for x in (algorithm.display, attack.display if attack else "no-attack",
                                              defense.display if defense else "no-defense"))
        return self.output / "tensorboard", f"{label}/seed{seed}"

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
            # every option each component was built with, typed, defaults filled in
            "arguments": built_arguments(algorithm, attack, defense, seed, self.model_args(seed), split),
            "data_hashes": data_hashes(split),
            "cache_key": tkey,
        }
        return finite_numbers(row)  # a metric that is NaN or inf is recorded as null, never as NaN

    def run(self, only: Optional[list[int]] = None) -> list[dict[str, Any]]:
        """Run the chosen rows (all by default), ``cfg.jobs`` at a time in separate processes."""
        rows = self.rows()
        if only is not None:
            bad = [i for i in only if not 0 <= i < len(rows)]
            if bad:
                raise ConfigError(f"--only {bad} out of range: this grid has rows 0..{len(rows) - 1}.")
        chosen = [i for i in range(len(rows)) if only is None or i in only]
        t = self.cfg.trainer
        ddp = jobs.uses_ddp(t)
        if ddp and self.cfg.jobs > 1:
            raise ConfigError(f"jobs: {self.cfg.jobs} trains rows side by side, one GPU each; with DDP "
                              f"(trainer.devices {t.devices!r}, strategy {t.strategy!r}) set jobs: 1.")
        if self.cfg.jobs > 1 and len(chosen) > 1:
            return jobs.run_parallel(self, rows, chosen)
        if ddp:
            # DDP: the shared stages before the first fit, which starts the other ranks (Lightning's
            # launcher): they then read every attack and surrogate from the cache
            for i in chosen:
                self.attacked_split(rows[i][3], rows[i][1])
                self.model_args(rows[i][3])
        out = []
        bar = tqdm(chosen, desc="experiment rows", disable=not (self.progress and is_global_zero()), file=sys.stderr)
        for i in bar:
            t0 = time.perf_counter()
            row = self.run_row(*rows[i])
            out.append(row)
            if is_global_zero():  # under DDP every rank runs the rows; rank 0 speaks
                jobs.summary(i, len(rows), row, time.perf_counter() - t0)
        return out


TABLE_LEGEND = (
    "CA: clean accuracy (%) on every test image. ASR: triggered non-target test images classified as the "
    "target (%); ASR cond.: the same among those the model classifies correctly without the trigger. "
    "none: no attack / no defense; –: no trigger to test. Mean ± std over the row's n seeds."
)


def _pick(specs: list, key: Any, kind: str, allow_none: bool = True) -> Optional[Spec]:
    """The entry of ``specs`` whose label or name is ``key`` (None for no attack / defense)."""
    if key is None:
        if allow_none:
            return None
        raise ConfigError(f"rows: an entry needs an {kind}.")
    matches = [s for s in specs if s is not None and key in (s.display, s.name)]
    if not matches:
        names = [s.display for s in specs if s is not None]
        raise ConfigError(f"rows: no {kind} called {key!r}; the config's {kind}s are {names}.")
    if len(matches) > 1 and not any(s.display == key for s in matches):
        raise ConfigError(f"rows: {kind} {key!r} is ambiguous; give each a distinct label.")
    exact = [s for s in matches if s.display == key]
    return (exact or matches)[0]


def experiment_main(argv: list[str]) -> int:
    """Entry point of ``ssl-backdoor experiment``: parse, run the rows, write the report."""
    cfg, ns = parse_experiment(argv)
    if getattr(ns, "print_config", False):  # the typed config as the rows will be built, then stop
        print(config_yaml(cfg), end="")
        return 0
    validate_ranges(cfg)  # before anything is created (no output, cache/ or tensorboard/ folder) or set
    check_name(cfg.name)  # runs/<name> stays inside runs/
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    output = Path(cfg.output or Path("runs") / cfg.name)
    bad = next((p for p in (output, *output.parents) if p.exists() and not p.is_dir()), None)
    if bad is not None:  # before any work: the report folder cannot be made there
        raise ConfigError(f"--output {output}: {bad} is a file, not a folder; choose an output folder "
                          "that does not exist or is a folder.")
    t0 = time.perf_counter()
    zero = is_global_zero()  # DDP: the other ranks train with rank 0; rank 0 alone locks and reports
    with locked_output(output if zero else None):  # one run per output folder
        runner = Runner(cfg, output, progress=not ns.no_progress)
        rows = runner.run(ns.only)
        if not zero:
            return 0
        rows = [finite_numbers(r) for r in merge_rows(output, cfg, grid_keys(runner.rows()), rows)]
        paths = write_report(rows, cfg, output, elapsed=time.perf_counter() - t0, version=__version__)
    print(paths["table"])
    print(TABLE_LEGEND)
    print(f"\nreport: {paths['md']}  (results.json, results.csv and figures beside it)")
    return 0


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
