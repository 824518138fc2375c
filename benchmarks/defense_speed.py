"""Speed and peak memory of the data-stage detectors at CIFAR-10 scale (N = 50,000), on CPU.

Measurements (each in its own subprocess, so the peak resident set size ``ru_maxrss`` belongs to that
measurement alone; it includes the Python/torch baseline and the generated input data):

* ``influence``: :func:`influence_scores` (exact) on ``K = 30`` epochs x ``N = 50,000`` examples x
  ``C = 10`` classes of random Dirichlet(1) softmax rows, with 50 planted poisons (0.1%, as in Carlini
  2021, Sec. 5.3) that share one slowly drifting trajectory; reports their AUROC and recall at 50
  removals. Target: < 60 s and < 4 GB.
* ``influence_1thread``: the same on one thread. Its CPU time is the cleanest measure of the work on
  a shared machine (no thread waits for a descheduled sibling); half of it estimates the wall time
  on an idle 2-core machine.
* ``influence_approx``: the same with ``approximate=True`` (64 principal directions); reports its
  relative error against the exact scores.
* ``clustering``: :func:`cluster_detect` on 50,000 random-ish 32x32x3 uint8 images (smooth random
  colour fields plus pixel noise) with a planted linear interpolation chain of 50 images (Sec. 5.2);
  reports recall / FPR of the flagged set and the AUROC of the scores. Target: < 120 s and < 8 GB.

Usage: ``python benchmarks/defense_speed.py [--n 50000] [--out benchmarks/results]``. Writes
``defense_speed.json`` and ``defense_speed.md`` atomically. Timings on a shared machine are noisy:
the load average is recorded next to them. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {
    "influence": {"seconds": 60.0, "peak_gb": 4.0},
    "influence_1thread": {"seconds": 60.0, "peak_gb": 4.0},
    "influence_approx": {"seconds": 60.0, "peak_gb": 4.0},
    "clustering": {"seconds": 120.0, "peak_gb": 8.0},
}


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # Linux: KiB


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _auroc(scores, mask) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(mask.numpy(), scores.double().numpy()))


def _history(n: int, epochs: int, classes: int, n_poison: int, seed: int):
    import torch

    torch.manual_seed(seed)
    history = torch.distributions.Dirichlet(torch.ones(classes)).sample((epochs, n)).float()
    g = torch.Generator().manual_seed(seed + 1)
    drift = torch.cumsum(torch.randn(epochs, classes, generator=g) * 0.05, 0)
    base = torch.softmax(torch.randn(classes, generator=g) + drift, -1)
    poison = torch.randperm(n, generator=g)[:n_poison]
    history[:, poison] = base[:, None, :] + 1e-4 * torch.randn(epochs, n_poison, classes, generator=g)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[poison] = True
    return history, mask


def _images(n: int, n_chain: int, seed: int):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for s in range(0, n, 5000):  # smooth colour fields + noise, made in slices to bound memory
        m = min(5000, n - s)
        low = torch.rand(m, 3, 4, 4, generator=g)
        x = F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False)
        x = x + 0.03 * torch.randn(m, 3, 32, 32, generator=g)
        images[s:s + m] = x.clamp(0, 1).mul(255).round().to(torch.uint8)
    start = images[int(torch.randint(n, (1,), generator=g))].float() / 255
    end = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(32, 32), mode="bicubic",
                        align_corners=False)[0].clamp(0, 1)
    alpha = torch.linspace(0, 1, n_chain + 2)[1:-1].view(-1, 1, 1, 1)
    chain = ((1 - alpha) * start + alpha * end).mul(255).round().to(torch.uint8)
    where = torch.randperm(n, generator=g)[:n_chain]
    images[where] = chain  # the chain replaces random clean images; its start image stays clean
    mask = torch.zeros(n, dtype=torch.bool)
    mask[where] = True
    return images, mask


def measure(name: str, n: int, exact_path: str | None) -> dict:
    """Run one measurement in this process and return its record."""
    import torch

    from lightning_ssl_backdoor.defenses import cluster_detect, influence_scores

    if name == "influence_1thread":
        torch.set_num_threads(1)
    record: dict = {"name": name, "n": n, "threads": torch.get_num_threads()}
    if name.startswith("influence"):
        epochs, classes, n_poison = 30, 10, max(2, n // 1000)
        history, mask = _history(n, epochs, classes, n_poison, seed=0)
        record.update(epochs=epochs, classes=classes, k=5, n_poison=n_poison)
        record["peak_gb_before"] = _peak_gb()
        approximate = name == "influence_approx"
        t0, c0, load0 = time.perf_counter(), _cpu_seconds(), os.getloadavg()[0]
        scores = influence_scores(history, k=5, approximate=approximate)
        record["seconds"] = time.perf_counter() - t0
        record["cpu_seconds"] = _cpu_seconds() - c0
        record["loadavg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        record["peak_gb"] = _peak_gb()
        record["auroc"] = _auroc(-scores, mask)
        lowest = torch.topk(scores, n_poison, largest=False).indices
        record["recall_at_n_poison"] = float(mask[lowest].float().mean())
        record["poison_mean_score"] = float(scores[mask].mean())
        record["benign_median_score"] = float(scores[~mask].median())
        if approximate:
            record["projection_dim"] = 64
            if exact_path and os.path.exists(exact_path):
                import numpy as np

                exact = torch.from_numpy(np.load(exact_path))
                rel = (scores - exact) / exact
                record["rel_error_median"] = float(rel.median())
                record["rel_error_p99"] = float(rel.quantile(0.99))
                record["rel_error_max"] = float(rel.max())
                record["exact_rows_fraction"] = float((rel.abs() < 1e-9).double().mean())
                record["upper_bound_holds"] = bool((scores >= exact - 1e-12).all())
        elif exact_path and name == "influence":
            import numpy as np

            np.save(exact_path, scores.numpy())
    elif name == "clustering":
        n_chain = 50
        images, mask = _images(n, n_chain, seed=0)
        record.update(image_shape=[3, 32, 32], n_chain=n_chain, n_neighbors=10, pca_dim=64)
        record["peak_gb_before"] = _peak_gb()
        t0, c0, load0 = time.perf_counter(), _cpu_seconds(), os.getloadavg()[0]
        result = cluster_detect(images, n_neighbors=10, pca_dim=64)
        record["seconds"] = time.perf_counter() - t0
        record["cpu_seconds"] = _cpu_seconds() - c0
        record["loadavg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        record["peak_gb"] = _peak_gb()
        flagged = result.flagged
        record["recall"] = float(flagged[mask].float().mean())
        record["fpr"] = float(flagged[~mask].float().mean())
        record["n_flagged"] = int(flagged.sum())
        record["auroc"] = _auroc(result.scores, mask)
        record["threshold"] = result.info["threshold"]
        record["median_merge_height"] = result.info["median_merge_height"]
        record["flagged_cluster_sizes"] = result.info["flagged_cluster_sizes"]
    else:
        raise SystemExit(f"unknown measurement {name!r}")
    return record


def _markdown(report: dict) -> str:
    lines = [
        "# Defense speed (CPU)",
        "",
        f"Machine: {report['machine']['cpu_count']} CPU cores, torch {report['machine']['torch']}, "
        f"{report['machine']['threads']} threads; load average before/after: "
        f"{report['machine']['loadavg_before']} / {report['machine']['loadavg_after']}. The machine was "
        "shared with other jobs, so timings are noisy (upper bounds of the idle-machine time).",
        "Peak memory is the whole measurement process's `ru_maxrss` (Python + torch + input data).",
        "",
        "`cpu s` is the process's user + system CPU time during the call; with 2 threads on an",
        "oversubscribed machine it also counts time spent waiting for a descheduled sibling thread,",
        "so the single-thread run's CPU time is the cleanest measure of the work (an idle 2-core",
        "machine needs about half of it). `load` is the 1-minute load average at the start and end",
        "of the call (2 = both cores busy).",
        "",
        "| measurement | N | seconds | cpu s | load | target s | peak GB | target GB | quality |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in report["results"]:
        t = TARGETS[r["name"]]
        if r["name"] == "clustering":
            q = (f"chain of {r['n_chain']}: recall {r['recall']:.3f}, FPR {r['fpr']:.2e}, "
                 f"AUROC {r['auroc']:.4f}")
        else:
            q = (f"{r['n_poison']} poisons: AUROC {r['auroc']:.4f}, "
                 f"recall@{r['n_poison']} {r['recall_at_n_poison']:.3f}")
            if "rel_error_median" in r:
                q += (f"; rel. error vs exact median {r['rel_error_median']:.2e}, p99 "
                      f"{r['rel_error_p99']:.2e}, max {r['rel_error_max']:.2e}")
        load = " / ".join(f"{x:.1f}" for x in r["loadavg_1min"])
        lines.append(f"| {r['name']} | {r['n']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{load} | {t['seconds']:.0f} | "
                     f"{r['peak_gb']:.2f} | {t['peak_gb']:.0f} | {q} |")
    one = next((r for r in report["results"] if r["name"] == "influence_1thread"), None)
    if one is not None:
        lines += [
            "",
            f"Estimate for an idle 2-core machine: exact influence needs {one['cpu_seconds']:.0f} "
            f"CPU-seconds of single-thread work, so about {one['cpu_seconds'] / 2:.0f}-"
            f"{one['cpu_seconds']:.0f} s wall (target 60 s).",
        ]
    clus = next((r for r in report["results"] if r["name"] == "clustering"), None)
    if clus is not None:
        lines += [
            "",
            f"Clustering: the flagged cluster ({clus['n_flagged']} images) is the planted chain plus "
            "the clean image the chain starts from, which lies on the interpolation path itself.",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--only", nargs="*", default=list(TARGETS))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--exact-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.n, args.exact_path)))
        return 0

    import torch

    from lightning_ssl_backdoor.data.artifacts import atomic_write_json, atomic_write_text

    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        },
        "targets": TARGETS,
        "results": [],
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        exact_path = os.path.join(tmp, "exact.npy")
        for name in args.only:
            cmd = [sys.executable, __file__, "--measure", name, "--n", str(args.n),
                   "--exact-path", exact_path]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                raise SystemExit(f"measurement {name} failed with exit code {out.returncode}")
            record = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(record), flush=True)
            report["results"].append(record)
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "defense_speed.json", report)
    atomic_write_text(args.out / "defense_speed.md", _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
