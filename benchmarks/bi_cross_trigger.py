"""Base rate of each trigger under Backdoor Invalidator: is what `bi` leaves a backdoor or the trigger itself?

`bi` (paper 001, the authors' deployment) pastes the test trigger AFTER the Gaussian filter, so a
blur-trained model meets a sharp pattern it has never seen. Part of the ASR that remains can then be
the trigger's own pull toward the target, with no backdoor at all. This script measures that pull:
for every finished `bi` row of a ``configs/experiments/cifar10_bi.yaml`` run, it loads the row's
trained model and pastes each attack's test trigger (same seed) after the blur, exactly as the row's
evaluation does. The trigger of attack X on the model trained under a DIFFERENT attack Y is X's base
rate under BI (Y's poisons never carried X's trigger); on the model trained under X itself it
reproduces the row's own ASR (a check that this script evaluates as the runner does).

    python benchmarks/bi_cross_trigger.py --run runs/cifar10_bi [--config configs/experiments/cifar10_bi.yaml]

Writes ``benchmarks/results/bi_cross_trigger.{json,md}`` (ASR and ASR conditioned on a correct clean
prediction, Yan et al. Eq. 6, in %; mean ± std over the models).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _quantize(x):
    return (x.clamp(0, 1) * 255).round() / 255


def measure(run_dir: Path, config: Path, attacks: tuple[str, ...]) -> list[dict[str, Any]]:
    import torch
    import yaml

    from lightning_ssl_backdoor.augment.gaussian import GaussianFilter
    from lightning_ssl_backdoor.pipeline.defense_stage import defense_context
    from lightning_ssl_backdoor.pipeline.experiment import Runner, config_from_dict
    from lightning_ssl_backdoor.pipeline.training import load_trained

    torch.set_num_threads(1)
    cfg = config_from_dict(yaml.safe_load(config.read_text()))
    runner = Runner(cfg, run_dir, progress=False)
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    spec = {a.display: a for a in cfg.attacks if a is not None}
    bi = [r for r in rows if r["defense"] == "bi" and r["attack"] in attacks]
    if not bi:
        raise SystemExit(f"error: {run_dir / 'results.json'} has no finished `bi` row of {list(attacks)}.")
    out = []
    for seed in sorted({r["seed"] for r in bi}):
        splits = {a: runner.attacked_split(seed, spec[a])[0] for a in attacks}
        for r in (r for r in bi if r["seed"] == seed):
            own = splits[r["attack"]]
            ctx = defense_context(own, seed, cfg.algorithms[0], runner.model_args(seed), cfg.data, cfg.trainer,
                                  run_dir / "cross_trigger_tmp", progress=False)
            blur = GaussianFilter(float(r["defense_info"]["options"]["filter_radius"]))
            folder = run_dir / "cache" / r["defense_info"]["training"]
            model = load_trained({"model_path": str(folder / "model.safetensors")}, ctx).evaluated
            for a, split in splits.items():
                x, y = split.test.images.float() / 255, split.test.labels
                with torch.no_grad():
                    clean = _quantize(blur(x))
                    pc = model(clean).argmax(1)
                    pt = model(_quantize(split.trigger(clean))).argmax(1)
                non_target = y != split.target
                correct = non_target & (pc == y)
                rec = {"seed": seed, "model_trained_under": r["attack"], "trigger_of": a,
                       "asr": round(100 * (pt[non_target] == split.target).float().mean().item(), 2),
                       "asr_conditioned": round(100 * (pt[correct] == split.target).float().mean().item(), 2)}
                print(rec, flush=True)
                out.append(rec)
    return out


def _ms(v: list[float]) -> str:
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def report(recs: list[dict[str, Any]], run_dir: Path) -> str:
    lines = [
        "# Triggers under Backdoor Invalidator: own model vs models trained under another attack",
        "",
        f"`python benchmarks/bi_cross_trigger.py --run {run_dir}`: each trigger pasted after BI's blur on the",
        "`bi` models of `configs/experiments/cifar10_bi.yaml` (same seed). \"own\" is the model trained under",
        "that attack (it reproduces the `bi` row); \"other\" is a model trained under a different attack, whose",
        "poisons never carried this trigger: the trigger's base rate under BI. ASR / ASR cond. in %,",
        "mean ± std over the models.",
        "",
        "| trigger of | own: ASR | own: ASR cond. | other: ASR | other: ASR cond. | other models |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a in dict.fromkeys(r["trigger_of"] for r in recs):
        own = [r for r in recs if r["trigger_of"] == a and r["model_trained_under"] == a]
        other = [r for r in recs if r["trigger_of"] == a and r["model_trained_under"] != a]
        lines.append(
            f"| {a} | {_ms([r['asr'] for r in own])} | {_ms([r['asr_conditioned'] for r in own])} | "
            f"{_ms([r['asr'] for r in other])} | {_ms([r['asr_conditioned'] for r in other])} | {len(other)} |"
        )
    lines += ["", "Per model (seed, trained under: ASR / ASR cond. of each trigger, %):", ""]
    for r in recs:
        lines.append(f"- seed {r['seed']}, {r['model_trained_under']}: trigger of {r['trigger_of']} "
                     f"{r['asr']:.2f} / {r['asr_conditioned']:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, type=Path, help="output folder of a cifar10_bi run (results.json, cache/)")
    p.add_argument("--config", type=Path, default=ROOT / "configs/experiments/cifar10_bi.yaml")
    p.add_argument("--attacks", default="mosaic,cl_badnets,narcissus")
    p.add_argument("--out", type=Path, default=RESULTS / "bi_cross_trigger")
    a = p.parse_args(argv)
    if not (a.run / "results.json").is_file():
        print(f"error: {a.run} has no results.json; run the cifar10_bi experiment first.", file=sys.stderr)
        return 2
    recs = measure(a.run, a.config, tuple(x for x in a.attacks.split(",") if x))
    from lightning_ssl_backdoor.data.artifacts import atomic_write_text

    atomic_write_text(a.out.with_suffix(".json"), json.dumps({"run": str(a.run), "rows": recs}, indent=1) + "\n")
    atomic_write_text(a.out.with_suffix(".md"), report(recs, a.run))
    print(f"wrote {a.out}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
