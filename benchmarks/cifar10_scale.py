"""Which CPU-scale victim learns a backdoor on natural CIFAR-10 images at all: the oracle scan.

Before comparing attacks at a new scale, check that the victim can learn a trigger at all
(otherwise every attack looks weak and every defense perfect). The oracle row of each scan point is
``fixmatch_oracle`` (:mod:`lightning_ssl_backdoor.ssl.oracle`: every triggered poison gets the target
pseudo-label with mask 1 at every step) on DeNeB's poisons with zero optimisation steps (P = 0: the
triggered poisons carry the trigger alone, the weak ones are unchanged copies of their sources).
Everything else is ``configs/experiments/cifar10_deneb.yaml``; each scan point overrides a few
settings (steps, width, number of triggered poisons, image size).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/cifar10_scale.py --points base,steps2000 --seeds 0

Writes ``benchmarks/results/cifar10_scale.json`` and ``.md`` (merging with points already there);
the per-point runs are cached under ``--workdir`` (resumable). Nothing asserts on numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_ssl_backdoor.data.artifacts import atomic_write_json, atomic_write_text
from lightning_ssl_backdoor.pipeline.experiment import Runner, config_from_dict
from lightning_ssl_backdoor.utils import quiet_lightning

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "experiments" / "cifar10_deneb.yaml"

#: name -> (description, overrides of the experiment config: dotted keys)
POINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("16 px, width 32, 64 triggered poisons (6%), 3,000 steps", {}),
    "steps2000": ("as base, 2,000 steps", {"trainer.max_steps": 2000}),
    "poisons128": ("as base, 128 triggered poisons (11%)", {"attack.budget": 128}),
    "poisons32": ("as base, 32 triggered poisons (3%)", {"attack.budget": 32}),
    "width16": ("as base, width 16", {"model.model_kwargs": {"width": 16}, "surrogate.model_kwargs": {"width": 16}}),
    "steps5000": ("as base, 5,000 steps", {"trainer.max_steps": 5000}),
    "px32": ("32 px images, 8x8 trigger 5 px from the corner (the paper's)", {
        "data.image_size": 32, "model.weak_pad": 4, "attack.trigger": {"name": "deneb", "size": 8, "margin": 5}}),
}


def point_config(name: str, seeds: list[int]) -> dict[str, Any]:
    base = yaml.safe_load(CONFIG.read_text())
    cfg = copy.deepcopy(base)
    deneb = next(a for a in base["attacks"] if a and a["name"] == "deneb")
    attack = {"name": "deneb", "label": "trigger-only", "init_args": {**deneb["init_args"], "steps": 0}}
    for key, value in POINTS[name][1].items():
        head, tail = key.split(".", 1)
        target = attack["init_args"] if head == "attack" else cfg[head]
        target[tail] = value
    cfg.update(name=f"cifar10_scale_{name}", seeds=seeds, attacks=[attack], defenses=[None],
               algorithms=[{"name": "fixmatch_oracle", "label": "oracle"}], rows=[{"attack": "trigger-only"}])
    return cfg


def _curve(hist: list[dict], key: str) -> list[float]:
    return [round(100 * h[key], 1) for h in hist if key in h]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="base")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "cifar10_scale"))
    args = ap.parse_args(argv)
    quiet_lightning()
    seeds = [int(s) for s in args.seeds.split(",")]
    out_json = RESULTS / "cifar10_scale.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {"points": {}}
    for name in args.points.split(","):
        cfg = point_config(name, seeds)
        cfg["jobs"] = args.jobs
        t0 = time.perf_counter()
        rows = Runner(config_from_dict(cfg), Path(args.workdir) / name, progress=False).run()
        per_seed = []
        for row in rows:
            hist = row.get("history", [])
            per_seed.append({
                "seed": row["seed"], "clean_accuracy": row["clean_accuracy"], "asr": row["asr"],
                "asr_conditioned": row["asr_conditioned"], "fit_seconds": round(row.get("fit_seconds", 0.0), 1),
                "asr_cond_curve": _curve(hist, "asr_cond_ema"), "steps": [h["step"] for h in hist],
            })
        results["points"][name] = {"description": POINTS[name][0], "overrides": POINTS[name][1],
                                   "wall_seconds": round(time.perf_counter() - t0, 1), "seeds": per_seed}
        results["meta"] = {"config": str(CONFIG.relative_to(ROOT)), "torch": torch.__version__,
                           "python": platform.python_version(), "machine": platform.machine()}
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_json, results)
        atomic_write_text(RESULTS / "cifar10_scale.md", render(results))
    print(render(results))
    return 0


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render(results: dict) -> str:
    lines = ["# CIFAR-10 at a 2-core CPU scale: can the victim learn a trigger at all?", "",
             "`benchmarks/cifar10_scale.py`: FixMatch with the pseudo-label oracle (every triggered poison",
             "gets the target pseudo-label with mask 1 at every step) on DeNeB's poisons with P = 0 (trigger only),",
             f"everything else `{results.get('meta', {}).get('config', CONFIG.name)}`. ASR conditioned on a correct",
             "clean prediction (Yan et al. Eq. 6), EMA model, last evaluation; mean ± std over the seeds listed.", "",
             "| point | setting | seeds | CA (%) | ASR (%) | ASR cond. (%) | fit s / row | ASR cond. over training (seed 0) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for name, p in results["points"].items():
        s = p["seeds"]
        curve = ", ".join(f"{v:.0f}" for v in s[0]["asr_cond_curve"]) if s else ""
        lines.append(f"| {name} | {p['description']} | {','.join(str(r['seed']) for r in s)} | "
                     f"{_ms([r['clean_accuracy'] for r in s])} | {_ms([r['asr'] for r in s])} | "
                     f"{_ms([r['asr_conditioned'] for r in s])} | {statistics.mean(r['fit_seconds'] for r in s):.0f} | {curve} |")
    lines += ["", "## The scan that led here", "",
              "Measured before this benchmark existed (issue 21's pilots: the same 4 classes, FixMatch batch 16 x mu 7,",
              "the oracle with the trigger alone, one seed, two runs sharing 2 cores; conditioned ASR):", "",
              "| setting | ASR cond. (%) |", "| --- | ---: |",
              "| 32 px, 8x8 trigger, tiny CNN width 16, 1,000 unlabeled, 800 steps, 32 triggered poisons | 4.6 |",
              "| the same, 128 triggered poisons | 7.2 |",
              "| 16 px, 4x4 trigger, width 32, 128 triggered poisons, 2,000 steps | 94.0 (CA 68.6, ~3 min) |",
              "| the same, 800 steps | 37 |", "| the same, 32 triggered poisons | 27 |", "| the same, width 16 | 78 |",
              "| 32 px, 8x8 trigger, width 32, 2,000 steps | 65 (14 min) |", "| 32 px, 8x8 trigger, width 16, 2,000 steps | 35 |",
              "", "So the scale every CIFAR-10 experiment here uses: 16 px images (the paper's 8x8 trigger on 32 px",
              "becomes 4x4, ~6% of the image), a tiny CNN of width 32, 3,000 steps, and half the poison rate of",
              "the 94% pilot (64 triggered poisons among 1,128 unlabeled images: 5.7%; DeNeB's 64 weak poisons",
              "make 128 poisons in all). The longer schedule buys back what fewer poisons cost: ASR was still",
              "rising at step 2,000 in the pilot.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
