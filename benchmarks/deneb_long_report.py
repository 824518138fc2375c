"""Issue 36's report: ``cifar10_deneb_long`` with the "what was learned" probe over steps.

Reads the run folder of ``configs/experiments/cifar10_deneb_long.yaml`` (``--output``; default
``runs/cifar10_deneb_long``): the runner's ``results.json`` for finished rows, and for a row still
training the validation history it has written so far (``cache/train-<key>/history.json``, one
point per 3,000-step evaluation), marked partial. Writes
``benchmarks/results/experiments/cifar10_deneb_long.json`` (the runner's results, plus any partial
rows under ``partial_rows``), the ``.md`` (the runner's table, then per row a table of step vs
clean accuracy, the test set's conditioned ASR and the probe: conditioned ASR with the trigger
alone / DeNeB's perturbation alone / both on the probe's images, the strong-view loss of the
triggered poisons under the target, and the hijack share; EMA weights, the evaluated ones) and
``cifar10_deneb_long_probe.png`` (those curves). Text under ``## What the curves show`` in an
existing ``.md`` is kept. Nothing asserts on numbers.

    python benchmarks/deneb_long_report.py [--output runs/cifar10_deneb_long]

The rows' folders are found with the runner's own train cache key (``Runner.train_key``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from lightning_ssl_backdoor.attacks.surrogate import load_surrogate  # noqa: E402
from lightning_ssl_backdoor.data import triggered_copy  # noqa: E402
from lightning_ssl_backdoor.data.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from lightning_ssl_backdoor.metrics import attack_success_rate  # noqa: E402
from lightning_ssl_backdoor.pipeline.experiment import Runner, config_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "experiments" / "cifar10_deneb_long.yaml"
OUT = ROOT / "benchmarks" / "results" / "experiments"
NOTES = "## What the curves show"
PROBE_COLS = [("asr_cond_ema", "test ASR cond."), ("probe_asr_cond_trigger_ema", "probe: trigger"),
              ("probe_asr_cond_perturbation_ema", "probe: perturbation"), ("probe_asr_cond_both_ema", "probe: both")]


def row_label(algorithm: str, attack: Any) -> str:
    return f"{algorithm} | {attack or 'none'}"


def theta0_metrics(runner: Runner) -> dict[str, float]:
    """theta_0's (every row's step 0) test CA and conditioned ASR with the config's trigger."""
    spec = next(a for a in runner.cfg.attacks if a is not None and a.display == runner.cfg.probe["attack"])
    split, _ = runner.attacked_split(0, spec)
    model = load_surrogate(runner.surrogate_path(0)).eval()
    with torch.no_grad():
        clean = model(split.test.images.float() / 255.0).argmax(1)
        trig = model(triggered_copy(split.test.images, split.trigger).float() / 255.0).argmax(1)
    y = split.test.targets
    return {"acc_ema": float((clean == y).float().mean()),
            "asr_cond_ema": attack_success_rate(trig, y, int(split.target), clean)}


def train_dirs(output: Path) -> tuple[list[tuple[str, Path]], dict[str, float]]:
    """(label, training folder) of every row, with the runner's own cache keys; theta_0's metrics."""
    runner = Runner(config_from_dict(yaml.safe_load(CONFIG.read_text())), output, progress=False)
    out = []
    for algorithm, attack, defense, seed in runner.rows():
        _, akey = runner.attacked_split(seed, attack)
        tkey = runner.train_key(akey, algorithm, runner.model_args(seed), seed)
        out.append((row_label(algorithm.display, attack.display if attack else None), runner.cache / f"train-{tkey}"))
    return out, theta0_metrics(runner)


def pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def probe_table(hist: list[dict[str, Any]], theta0: dict[str, float]) -> list[str]:
    lines = ["| step | CA (%) | " + " | ".join(f"{n} (%)" for _, n in PROBE_COLS)
             + " | poison strong-view CE to target | hijack (%) |",
             "| ---: | ---: | " + " | ".join("---:" for _ in PROBE_COLS) + " | ---: | ---: |"]
    if hist and "probe_asr_cond_trigger_step0" in hist[-1]:
        h = hist[-1]
        loss = h.get("probe_strong_target_loss_step0")
        lines.append(f"| 0 (theta_0) | {pct(theta0['acc_ema'])} | {pct(theta0['asr_cond_ema'])} | " + " | ".join(pct(h.get(k.replace("_ema", "_step0")))
                                                        for k, _ in PROBE_COLS[1:])
                     + f" | {'–' if loss is None else f'{loss:.3f}'} | {pct(h.get('backdoor/hijack_step0'))} |")
    for h in hist:
        loss = h.get("probe_strong_target_loss_ema")
        lines.append(f"| {h['step']} | {pct(h.get('acc_ema'))} | " + " | ".join(pct(h.get(k)) for k, _ in PROBE_COLS)
                     + f" | {'–' if loss is None else f'{loss:.3f}'} | {pct(h.get('backdoor/hijack'))} |")
    return lines


def figure(curves: dict[str, list[dict[str, Any]]], theta0: dict[str, float], path: Path,
           base_rate: Any = None) -> None:
    """The probe curves, one colour per row in every panel; ``base_rate``: the trigger's conditioned
    ASR (%) on the no-attack model at the end, drawn in the test-ASR panel."""
    panels = [("acc_ema", "clean accuracy (%)"), ("asr_cond_ema", "test ASR cond., trigger (%)"), ("probe_asr_cond_perturbation_ema", "probe: perturbation alone (%)"),
              ("probe_asr_cond_both_ema", "probe: trigger + perturbation (%)"), ("probe_strong_target_loss_ema", "poison strong-view CE to target")]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    colors = {label: f"C{i}" for i, label in enumerate(curves)}  # one colour per row in every panel
    for ax, (key, title) in zip(axes, panels):
        for label, hist in curves.items():
            pts = [(h["step"], h[key]) for h in hist if key in h]
            step0 = (hist[-1].get(key.replace("_ema", "_step0")) if key.startswith("probe_") else theta0.get(key)) if hist else None
            if step0 is not None:
                pts = [(0, step0)] + pts
            if not pts:
                continue
            xs, ys = zip(*pts)
            scale = 1 if "loss" in key else 100
            ax.plot(xs, [scale * y for y in ys], marker="o", ms=3, label=label, color=colors[label])
        if key == "asr_cond_ema" and base_rate is not None:
            ax.axhline(base_rate, color="0.3", ls="--", lw=1, label="base rate")
        if "loss" not in key:
            ax.set_ylim(bottom=0)
        ax.set_xlim(-500, 30_500)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("victim step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ms=3, label=lb) for lb, c in colors.items()]
    if base_rate is not None:
        handles.append(plt.Line2D([], [], color="0.3", ls="--", lw=1,
                                  label="base rate: the trigger on the no-attack model"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=str(ROOT / "runs" / "cifar10_deneb_long"))
    args = ap.parse_args(argv)
    output = Path(args.output)
    results_path = output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"rows": []}
    done = {row_label(r["algorithm"], r["attack"]): r for r in results["rows"]}
    curves, partial = {}, []
    dirs, theta0 = train_dirs(output)
    for label, folder in dirs:
        if label in done:
            curves[label] = done[label]["history"]
        elif (folder / "history.json").is_file():
            hist = json.loads((folder / "history.json").read_text())
            curves[label] = hist
            partial.append({"row": label, "reached_step": hist[-1]["step"] if hist else 0, "history": hist})
    results["partial_rows"] = partial
    results["theta0"] = theta0
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "cifar10_deneb_long.json", results)
    md_path = OUT / "cifar10_deneb_long.md"
    notes = ""
    if md_path.is_file() and NOTES in md_path.read_text():
        notes = md_path.read_text().split(NOTES, 1)[1]
    runner_md = (output / "results.md").read_text() if (output / "results.md").is_file() else ""
    table = runner_md.split("\n## ")[0].strip()
    # the runner's hijack and base-rate sections, as it wrote them
    extra = [part for part in runner_md.split("\n## ")[1:] if part.startswith(("Hijack", "Base rates"))]
    lines = ["# cifar10_deneb_long (issue 36): DeNeB with a 10x longer victim schedule", "",
             "`configs/experiments/cifar10_deneb_long.yaml`: the `cifar10_deneb` setting, FixMatch from theta_0 "
             "for 30,000 steps (cosine schedule over them), evaluated every 3,000 steps, seed 0.", ""]
    if table:
        lines += ["## Finished rows (the runner's table)", "", *table.splitlines()[1:], ""]
        for part in extra:
            lines += ["## " + part.strip(), ""]
    if partial:
        lines += ["## Rows still training (partial)", "",
                  *[f"- {p['row']}: last evaluation at step {p['reached_step']} of 30,000" for p in partial], ""]
    lines += ["## The probe over steps", "",
              "EMA weights (the evaluated ones). CA and test ASR cond.: the full test set (1,000 images), the "
              "trigger alone, conditioned on a correct clean prediction (Yan et al. Eq. 6). Probe: 96 seeded "
              "non-target test images; conditioned ASR with the trigger alone, with DeNeB's perturbation alone "
              "(Alg. 1 by theta_0 on the clean image, full P, no trigger) and with both (Alg. 1 on the triggered "
              "image, as a strong poison is made); `lightning_ssl_backdoor/ssl/probe.py`. Poison strong-view CE: "
              "mean cross-entropy under the target of the triggered poisons' strong views (4 seeded views "
              "each, the same at every evaluation). Hijack: share of the triggered poisons whose weak view "
              "is pseudo-labelled as the target above the threshold. Step 0 is theta_0.", ""]
    for label, hist in curves.items():
        lines += [f"### {label}" + (" (partial)" if any(p["row"] == label for p in partial) else ""), "",
                  *probe_table(hist, theta0), ""]
    if curves:
        clean = [r for r in results["rows"] if r.get("attack") is None and r.get("base_rates")]
        rate = next(iter(clean[0]["base_rates"].values()))["asr_conditioned"] if clean else None
        figure(curves, theta0, OUT / "cifar10_deneb_long_probe.png", rate)
        lines += ["![probe curves](cifar10_deneb_long_probe.png)", ""]
    lines += [NOTES + (notes.rstrip() if notes else "\n\n(to be written when the rows finish)"), ""]
    atomic_write_text(md_path, "\n".join(lines))
    print(md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
