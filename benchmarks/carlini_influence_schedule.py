"""How long a schedule does Carlini's training-dynamics influence (Sec. 5.3) need on CIFAR-10?

Issue 20: on digits the recorded prediction changes were noise (roughness 2.9-3.0) and influence did
not separate the interpolation poisons (AUROC 0.55). Sec. 5.3 records one EMA model per epoch of a
long run. This sweep says, for a GPU user, at how many recorded epochs (and at what roughness)
influence starts to separate the poisons at the CPU scale of ``configs/experiments/cifar10_carlini.yaml``.

For each schedule length (``--steps``, the trainer's ``max_steps``; the cosine schedule is stretched
to it, as a longer run would be) and each trial seed, the attacked split of the config is trained
once while the influence defense records the EMA model's softmax on every unlabeled image once per
epoch (``every_n_steps: epoch``). The history is scored in full and on its first quarter and half
(prefixes: what a run stopped early would have recorded, on the longer run's learning rate). Each
score reports AUROC (poisons ranked by lowest influence), recall at the paper's cut (the poisons
among the 5% lowest, ``drop_fraction``), the roughness ``R`` of the poisons' and clean images'
recorded changes (0 smooth, 2 random walk, 3 white noise) and whether the attack succeeded (x*
labelled y* by the recording model). No retraining: the defense's retraining does not change the
ranking.

    python benchmarks/carlini_influence_schedule.py --run runs/carlini_schedule --seeds 0,1 \\
        --steps 1500,3000,6000 --jobs 2 [--data-root DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/experiments/cifar10_carlini.yaml"
PREFIXES = (0.25, 0.5, 1.0)


def _config(config: Path, steps: int, data_root: Optional[str]) -> tuple[dict, dict]:
    import yaml

    d = copy.deepcopy(yaml.safe_load(Path(config).read_text()))
    d["trainer"]["max_steps"] = int(steps)
    d["trainer"]["val_check_interval"] = min(int(d["trainer"].get("val_check_interval", steps)), int(steps))
    if data_root:
        d["data"]["root"] = data_root
    inf = next(x for x in d["defenses"] if isinstance(x, dict) and x.get("name") == "influence")
    return d, dict(inf.get("init_args") or {})


def score(history, poison, k: int, drop_fraction: float) -> dict[str, Any]:
    """AUROC, recall at the ``drop_fraction`` cut and roughness of one recorded history."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from lightning_ssl_backdoor.defenses.influence import delta_roughness, influence_scores

    pm = poison.numpy().astype(bool)
    inf = influence_scores(history, k=k, lag=1).numpy()
    n_drop = max(1, int(round(drop_fraction * inf.shape[0])))
    dropped = np.zeros_like(pm)
    dropped[np.argsort(inf, kind="stable")[:n_drop]] = True
    return {
        "records": int(history.shape[0]),
        "auroc": float(roc_auc_score(pm, -inf)),
        "recall_at_cut": float(dropped[pm].mean()),
        "poison_median": float(np.median(inf[pm])),
        "clean_median": float(np.median(inf[~pm])),
        "roughness_poison": float(delta_roughness(history[:, poison])),
        "roughness_clean": float(delta_roughness(history[:, ~poison])),
    }


def record_one(run: str, config: str, steps: int, seed: int, data_root: Optional[str]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from lightning_ssl_backdoor.defenses.influence_defense import InfluenceDefense
    from lightning_ssl_backdoor.pipeline.defense_stage import defense_context
    from lightning_ssl_backdoor.pipeline.experiment import Runner, config_from_dict

    d, record = _config(Path(config), steps, data_root)
    cfg = config_from_dict(d)
    runner = Runner(cfg, Path(run), progress=False)
    split, _ = runner.attacked_split(seed, cfg.attacks[0])
    stage = Path(run) / "schedule" / f"steps{steps}-seed{seed}"
    ctx = defense_context(split, seed, cfg.algorithms[0], runner.model_args(seed), cfg.data, cfg.trainer, stage,
                          progress=False)
    keys = ("every_n_steps", "k", "use_ema")
    defense = InfluenceDefense(**{k: v for k, v in record.items() if k in keys}, figure=False)
    history, res = defense.record(split, ctx)  # [K, N, C], float
    poison = split.unlabeled_poison_mask.bool()
    test = res.get("test", {})
    k, drop = int(record.get("k", 5)), float(record.get("drop_fraction", 0.05))
    scores, seen = [], set()
    for frac in PREFIXES:
        n = min(history.shape[0], max(3, int(round(frac * history.shape[0]))))
        if n not in seen:  # a short history gives the same prefix twice
            seen.add(n)
            scores.append({"prefix": frac, **score(history[:n], poison, k, drop)})
    out = {
        "steps": int(steps), "seed": int(seed), "every_n_steps": defense.record_interval(split, ctx),
        "num_poisons": int(poison.sum()), "num_unlabeled": int(poison.numel()),
        "clean_accuracy": test.get("acc_ema", test.get("acc")),
        "targeted": test.get("targeted_ema", test.get("targeted")),
        "scores": scores,
    }
    (stage / "schedule.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def markdown(rows: list[dict[str, Any]], config: str) -> str:
    lines = [
        "# Carlini Sec. 5.3 influence against the schedule length (CIFAR-10, CPU scale)",
        "",
        f"Setting: `{config}` with `trainer.max_steps` swept; the EMA model's predictions on every unlabeled",
        "image recorded once per epoch; `benchmarks/carlini_influence_schedule.py`. Each run is scored on",
        "its whole history and on its first quarter and half. `x*`: the attack succeeded (target image",
        "labelled y* at the end). Recall: share of the poisons among the 5% lowest influence (the paper's",
        "cut). `R`: roughness of the recorded changes (0 smooth, 2 random walk, 3 white noise).",
        "",
        "| steps | seed | CA | x* | records used | AUROC | recall at cut | R poison / clean |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ca = "-" if r["clean_accuracy"] is None else f"{100 * r['clean_accuracy']:.1f}"
        x = "-" if r["targeted"] is None else f"{r['targeted']:.0f}"
        for s in r["scores"]:
            lines.append(f"| {r['steps']} | {r['seed']} | {ca} | {x} | {s['records']} | {s['auroc']:.3f} | "
                         f"{100 * s['recall_at_cut']:.1f}% | {s['roughness_poison']:.2f} / {s['roughness_clean']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="working folder (attacks and recordings are cached and reused)")
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", default="1500,3000,6000", help="schedule lengths (trainer.max_steps), comma-separated")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--data-root", default=None, help="override data.root of the config")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",") if s]
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.error("--steps and --seeds take comma-separated integers, e.g. --steps 1500,3000")
    if not steps or min(steps) < 1:
        p.error("--steps needs at least one positive number of steps")
    tasks = [(args.run, args.config, s, seed, args.data_root) for s in sorted(steps, reverse=True) for seed in seeds]
    if args.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
            rows = list(ex.map(record_one, *zip(*tasks)))
    else:
        rows = [record_one(*t) for t in tasks]
    rows.sort(key=lambda r: (r["steps"], r["seed"]))
    from lightning_ssl_backdoor import __version__
    from lightning_ssl_backdoor.data.artifacts import atomic_write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Path(args.config).resolve()
    shown = str(cfg.relative_to(ROOT)) if cfg.is_relative_to(ROOT) else str(cfg)
    atomic_write_json(out / "carlini_influence_schedule.json",
                      {"config": shown, "package_version": __version__, "steps": steps, "seeds": seeds, "rows": rows})
    (out / "carlini_influence_schedule.md").write_text(markdown(rows, shown))
    print((out / "carlini_influence_schedule.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
