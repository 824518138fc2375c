"""Why DeNeB implants no backdoor on the digits setting: a pseudo-label oracle.

DeNeB (Yan et al. 2021) needs two things to happen in the victim's FixMatch training:

1. *hijack*: the weak view of a triggered poison is pseudo-labelled as the target t (Alg. 1's
   perturbation P does this for theta_0), and
2. *transfer*: training the strong view towards t teaches the model the trigger, so that clean
   test images with the trigger alone are sent to t.

This benchmark removes step 1 from the question. ``OracleFixMatch`` is FixMatch except that every
triggered poison gets the pseudo-label t with mask 1 at every step (a perfect hijack); everything
else (data, theta_0 warm start, trainer) is ``configs/experiments/deneb_digits.yaml``. Whatever ASR
remains is the most any hijack can give with these poisons, and it isolates step 2.

Rows (all with the oracle, 32 source images -> 32 weak + 32 triggered poisons, target 0):

- ``trigger only``: DeNeB with 0 iterations, P = 0 (source image + trigger);
- ``DeNeB eps 32/255, EOT 4``: Alg. 1 + 2 with the paper's eps, robust to the weak crop
  (the strongest variant of ``results/experiments/deneb_digits_ablation.md``);
- ``... eps 16/255`` and ``... eps 8/255``: the same with smaller budgets;
- ``random sign noise 32/255``: P replaced by seeded +-eps noise (no optimisation, no direction).

The triggered poisons are the second half of the appended poisons (DeNeB appends the weak ones, then
the triggered ones), which is how the oracle finds them.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/deneb_oracle.py [--jobs 2] [--steps 600]

Writes ``benchmarks/results/deneb_oracle.json`` and ``.md`` atomically; nothing asserts on numbers.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from lightning_ssl_backdoor.attacks import ATTACKS
from lightning_ssl_backdoor.attacks.deneb import DeNeBAttack
from lightning_ssl_backdoor.data.artifacts import atomic_write_json, atomic_write_text
from lightning_ssl_backdoor.losses import fixmatch_pseudo_labels
from lightning_ssl_backdoor.pipeline.experiment import Runner, config_from_dict
from lightning_ssl_backdoor.ssl.fixmatch import FixMatch
from lightning_ssl_backdoor.utils import quiet_lightning

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "experiments" / "deneb_digits.yaml"
TRIGGER = {"name": "deneb", "size": 4, "margin": 2}


class OracleFixMatch(FixMatch):
    """FixMatch whose triggered poisons (the second half of the poison mask) always get the target
    pseudo-label with mask 1: the ceiling of any pseudo-label hijack."""

    def compute_losses(self, labeled: dict, unlabeled: dict) -> dict[str, Any]:
        logits_l, logits_w, logits_s = self.unlabeled_logits(labeled, unlabeled)
        sup = self.supervised_loss(logits_l, labeled["y"])
        pseudo, mask, _ = fixmatch_pseudo_labels(logits_w.detach(), float(self.hparams.threshold))
        poisons = torch.nonzero(self._poison_mask).flatten()
        triggered = torch.isin(unlabeled["idx"], poisons[len(poisons) // 2:])
        pseudo = torch.where(triggered, torch.full_like(pseudo, int(self.target)), pseudo)
        mask = mask | triggered
        unsup = (F.cross_entropy(logits_s, pseudo, reduction="none") * mask.float()).mean()
        return {"loss": sup + self.hparams.lambda_u * unsup, "sup_loss": sup.detach(),
                "unsup_loss": unsup.detach(), "mask_rate": mask.float().mean(), "u_pseudo": pseudo, "u_mask": mask}


class SignNoiseDeNeB(DeNeBAttack):
    """DeNeB's poisons with P replaced by seeded +-``noise_eps`` sign noise (no optimisation):
    strong = trigger image + (1 - w) noise, weak = image + w noise, as Eq. 17-18 with tied w."""

    name = "deneb_sign_noise"

    def __init__(self, target: int = 0, seed: int = 0, budget: Any = None, trigger: Any = None,
                 beta: float = 9.0, noise_eps: float = 32.0 / 255.0, progress: bool = True) -> None:
        super().__init__(target=target, seed=seed, budget=budget, trigger=trigger, beta=beta, steps=0,
                         progress=progress)
        self.noise_eps = float(noise_eps)

    def craft(self, split, pool, chosen, model, trigger, generator):
        out = super().craft(split, pool, chosen, model, trigger, generator)
        n = len(chosen)
        noise = (torch.randint(0, 2, out.images[:n].shape, generator=generator).float() * 2 - 1) * self.noise_eps
        w = out.meta["w"].view(-1, 1, 1, 1)
        scale = torch.cat([w[:n], 1.0 - w[n:]])
        img = out.images.float() / 255.0 + scale * torch.cat([noise, noise])
        out.images = (img.clamp(0, 1) * 255.0).round().to(torch.uint8)
        return out


ATTACKS.setdefault(SignNoiseDeNeB.name, SignNoiseDeNeB)

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("trigger only (P = 0)", {"name": "deneb", "init_args": {"steps": 0}}),
    ("DeNeB eps 32/255, EOT 4", {"name": "deneb", "init_args": {"eot": 4}}),
    ("DeNeB eps 16/255, EOT 4", {"name": "deneb", "init_args": {"eot": 4, "eps": 16 / 255}}),
    ("DeNeB eps 8/255, EOT 4", {"name": "deneb", "init_args": {"eot": 4, "eps": 8 / 255}}),
    ("random sign noise 32/255", {"name": SignNoiseDeNeB.name, "init_args": {}}),
]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "deneb_oracle"))
    args = ap.parse_args(argv)
    quiet_lightning()
    base = yaml.safe_load(CONFIG.read_text())
    attacks = []
    for i, (label, spec) in enumerate(VARIANTS):
        attacks.append({"name": spec["name"], "label": f"v{i}",
                        "init_args": {"target": 0, "budget": 32, "trigger": TRIGGER, **spec["init_args"]}})
    cfg = {**base, "name": "deneb_oracle", "seeds": [args.seed], "threads": 1, "jobs": args.jobs,
           "algorithms": [{"name": f"{Path(__file__).stem}.OracleFixMatch", "label": "oracle"}],
           "attacks": attacks, "defenses": [None], "rows": [{"attack": a["label"]} for a in attacks]}
    cfg["trainer"] = {**base["trainer"], "max_steps": args.steps}
    t0 = time.perf_counter()
    rows = Runner(config_from_dict(cfg), Path(args.workdir), progress=False).run()
    seconds = time.perf_counter() - t0
    table = []
    for (label, _), row in zip(VARIANTS, rows):
        hist = row.get("history", [])
        table.append({"variant": label, "clean_accuracy": row["clean_accuracy"], "asr": row["asr"],
                      "asr_conditioned": row["asr_conditioned"],
                      "asr_by_step": [(h["step"], round(100 * h.get("asr_ema", 0.0), 2)) for h in hist]})
    meta = {"seed": args.seed, "steps": args.steps, "config": str(CONFIG.relative_to(ROOT)),
            "torch": torch.__version__, "python": platform.python_version(), "seconds": round(seconds, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "deneb_oracle.json", {"meta": meta, "rows": table})
    lines = ["# DeNeB on digits with a perfect pseudo-label hijack (oracle)", "",
             f"`benchmarks/deneb_oracle.py`: `{meta['config']}` (FixMatch, 600 steps, warm start from theta_0), "
             f"seed {args.seed}; every triggered poison is pseudo-labelled as the target with mask 1 at every step.",
             "", "| poisons (32 weak + 32 triggered) | CA (%) | ASR (%) | ASR cond. (%) | ASR (EMA) at steps 100..600 |",
             "| --- | ---: | ---: | ---: | --- |"]
    for r in table:
        curve = ", ".join(f"{a:.1f}" for _, a in r["asr_by_step"])
        lines.append(f"| {r['variant']} | {r['clean_accuracy']:.2f} | {r['asr']:.2f} | {r['asr_conditioned']:.2f} | {curve} |")
    lines += ["", f"torch {meta['torch']}, python {meta['python']}, {meta['seconds']} s on this machine.", ""]
    atomic_write_text(RESULTS / "deneb_oracle.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
