"""Batched vs one-image-at-a-time DeNeB poison generation (Yan et al. 2021, Alg. 1) on the CPU.

Setting: the experiments' digits setting (configs/experiments/quickstart.yaml, deneb_digits.yaml):
digits at 16 px, 5 labels per class (50 labeled images, seed 0), theta_0 = tiny_cnn trained on
the labeled split only (Yan et al. Step 1) with the experiments' surrogate settings
(:func:`train_surrogate`, 1000 steps, lr 0.03, batch 32), DeNeB's random-pattern trigger scaled to
16 px (4 x 4, 2 px from the bottom-right corner) and the paper's DeNeB defaults (eps 32/255, 1000
iterations, lr 0.01 x0.95 every 200, lambda 0.01, beta 9).

Speed: both paths run :func:`deneb_perturbation` on the same 64 images (32 unlabeled source images
and their triggered copies, i.e. what DeNeB with a budget of 32 optimises), the same pre-drawn
anchor mini-batches and the same number of iterations; only ``chunk_size`` differs (64 vs 1).
Because the model is frozen in eval mode and per-image losses are summed, the results agree up to
float rounding; the script records the largest difference next to the timings, in float32 (the
default) and in float64 (where rounding cannot cross ReLU kinks). It never asserts time.

Acceptance (``--acceptance-targets``; empty to skip): for each target, :class:`DeNeBAttack` with
32 source images on the same split and theta_0; the fraction of strongly perturbed triggered
poisons that theta_0 classifies as the target, the fraction of weakly perturbed poisons whose
theta_0 prediction equals that of the clean source image, and the largest deviation in grey
levels (all on the stored, quantised poisons).

Writes ``benchmarks/results/poison_speed.json`` and ``.md`` (atomically).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/poison_speed.py [--poisons 64] [--steps 1000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_ssl_backdoor.attacks.adversarial import predict  # noqa: E402
from lightning_ssl_backdoor.attacks.deneb import DeNeBAttack, deneb_perturbation  # noqa: E402
from lightning_ssl_backdoor.attacks.surrogate import accuracy, train_surrogate  # noqa: E402
from lightning_ssl_backdoor.data.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from lightning_ssl_backdoor.data.imageset import quantize  # noqa: E402
from lightning_ssl_backdoor.data.readers import read_digits  # noqa: E402
from lightning_ssl_backdoor.data.split import make_split  # noqa: E402
from lightning_ssl_backdoor.triggers import build_trigger  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poisons", type=int, default=64, help="images optimised (half sources, half triggered)")
    ap.add_argument("--steps", type=int, default=1000, help="DeNeB iterations for both paths")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--labels-per-class", type=int, default=5)
    ap.add_argument("--surrogate-steps", type=int, default=1000)
    ap.add_argument("--surrogate-lr", type=float, default=0.03)
    ap.add_argument("--surrogate-batch", type=int, default=32)
    ap.add_argument("--trigger-size", type=int, default=4)
    ap.add_argument("--trigger-margin", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "poison_speed")
    ap.add_argument("--acceptance-targets", type=str, default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--acceptance-sources", type=int, default=32, help="source images per target (2 poisons each)")
    ap.add_argument("--acceptance-steps", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    # the experiments' digits setting and their theta_0 (trained on the labeled split only)
    train = read_digits("train", image_size=args.image_size)
    test = read_digits("test", image_size=args.image_size)
    split = make_split(train, test, labels_per_class=args.labels_per_class, seed=args.seed)
    t0 = time.perf_counter()
    model = train_surrogate(split.labeled, steps=args.surrogate_steps, lr=args.surrogate_lr,
                            batch_size=args.surrogate_batch, seed=args.seed, progress=False)
    t_surrogate = time.perf_counter() - t0
    trigger_spec = {"name": "deneb", "size": args.trigger_size, "margin": args.trigger_margin}
    trigger = build_trigger({**trigger_spec, "seed": args.seed}, split.unlabeled.image_shape)

    # what DeNeB optimises for a budget of poisons / 2: source images and their triggered copies
    g = torch.Generator().manual_seed(args.seed)
    n_src = (args.poisons + 1) // 2
    rows = torch.randperm(len(split.unlabeled), generator=g)[:n_src]
    u = split.unlabeled.float()[rows]
    x = torch.cat([u, trigger(u)])[: args.poisons]
    anchors = split.labeled.float()[split.labeled.labels == args.target]
    m = min(64, len(anchors))
    bidx = torch.stack([torch.randperm(len(anchors), generator=g)[:m] for _ in range(len(x))])
    kw = dict(target=args.target, steps=args.steps, progress=True)

    runs = {}
    for precision in ("float32", "float64"):
        for path, chunk in (("batched", len(x)), ("single", 1)):
            t0 = time.perf_counter()
            delta = deneb_perturbation(model, x, anchors, bidx, chunk_size=chunk, precision=precision, **kw)
            runs[precision, path] = (time.perf_counter() - t0, delta)
            print(f"{precision} {path}: {runs[precision, path][0]:.1f} s", flush=True)
    t_batched, batched = runs["float32", "batched"]
    t_single, single = runs["float32", "single"]
    diff = float((batched - single).abs().max())
    diff64 = float((runs["float64", "batched"][1] - runs["float64", "single"][1]).abs().max())
    # what is stored: the quantised poisons; count uint8 pixels that differ between the two paths
    q_b, q_s = quantize(x + batched), quantize(x + single)
    q_b64, q_s64 = quantize(x + runs["float64", "batched"][1]), quantize(x + runs["float64", "single"][1])
    result = {
        "benchmark": "DeNeB poison generation, batched vs one image at a time",
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "setting": {
            "dataset": "digits",
            "image_size": args.image_size,
            "labels_per_class": args.labels_per_class,
            "labeled": len(split.labeled),
            "unlabeled": len(split.unlabeled),
            "seed": args.seed,
            "trigger": trigger_spec,
            "eps": "32/255",
            "anchors_per_minibatch": m,
            "images": f"{n_src} unlabeled sources + their triggered copies",
        },
        "poisons": len(x),
        "steps": args.steps,
        "image_size": args.image_size,
        "surrogate": {"arch": "tiny_cnn", "trained_on": "split.labeled", "steps": args.surrogate_steps,
                      "lr": args.surrogate_lr, "batch_size": args.surrogate_batch,
                      "seconds": round(t_surrogate, 1),
                      "test_accuracy": round(accuracy(model, split.test), 4)},
        "batched_seconds": round(t_batched, 3),
        "single_seconds": round(t_single, 3),
        "speedup": round(t_single / t_batched, 2),
        "batched_poisons_per_second": round(len(x) / t_batched, 3),
        "single_poisons_per_second": round(len(x) / t_single, 3),
        "max_abs_diff": diff,
        "outputs_match_1e-4": bool(diff <= 1e-4),
        "uint8_pixels_differing": int((q_b != q_s).sum()),
        "uint8_max_diff": int((q_b.int() - q_s.int()).abs().max()),
        "uint8_pixels_total": int(q_b.numel()),
        "float64": {
            "batched_seconds": round(runs["float64", "batched"][0], 3),
            "single_seconds": round(runs["float64", "single"][0], 3),
            "speedup": round(runs["float64", "single"][0] / runs["float64", "batched"][0], 2),
            "max_abs_diff": diff64,
            "outputs_match_1e-4": bool(diff64 <= 1e-4),
            "uint8_pixels_differing": int((q_b64 != q_s64).sum()),
        },
        "max_abs_perturbation": round(float(batched.abs().max()), 6),
    }
    targets = [int(t) for t in args.acceptance_targets.split(",") if t.strip()]
    if targets:
        result["deneb_digits_acceptance"] = acceptance(args, targets, split, model, trigger_spec)
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result)
    st, sur = result["setting"], result["surrogate"]
    if diff <= 1e-4:
        f32_note = f"within 1e-4 in float32 as well ({diff:.1e})"
    else:
        f32_note = (f"{diff:.1e} in float32, {diff / 1e-4:.1f}x the 1e-4 tolerance (within 1e-4: False); "
                    "the float64 comparison is the exact one")
    md = [
        "# DeNeB poison generation: batched vs one image at a time (CPU)",
        "",
        f"**Setting: the experiments' digits setting** (configs/experiments/quickstart.yaml, "
        f"deneb_digits.yaml): digits at **{st['image_size']} px**, {st['labels_per_class']} labels per class "
        f"({st['labeled']} labeled, {st['unlabeled']} unlabeled, seed {st['seed']}); theta_0 = tiny_cnn "
        f"trained on the labeled split only (`train_surrogate`, {sur['steps']} steps, lr {sur['lr']}, batch "
        f"{sur['batch_size']}; test accuracy {100 * sur['test_accuracy']:.1f}%); DeNeB trigger {args.trigger_size} x "
        f"{args.trigger_size} at {args.trigger_margin} px from the bottom-right corner; eps 32/255, "
        f"{st['anchors_per_minibatch']} target-class anchors per mini-batch B_l (all there are).",
        "",
        f"{result['poisons']} images ({st['images']}, what DeNeB with a budget of {n_src} optimises), "
        f"**{result['steps']} iterations** of Alg. 1 on both paths (the experiments' count), same draws, "
        f"torch {result['torch']}, {result['threads']} thread(s).",
        "",
        "| path | seconds | poisons / s |",
        "| --- | ---: | ---: |",
        f"| batched (chunk {result['poisons']}), float32 | {result['batched_seconds']} | {result['batched_poisons_per_second']} |",
        f"| one at a time, float32 | {result['single_seconds']} | {result['single_poisons_per_second']} |",
        f"| batched (chunk {result['poisons']}), float64 | {result['float64']['batched_seconds']} | "
        f"{round(len(x) / result['float64']['batched_seconds'], 3)} |",
        f"| one at a time, float64 | {result['float64']['single_seconds']} | "
        f"{round(len(x) / result['float64']['single_seconds'], 3)} |",
        "",
        f"Speed-up of the batched path: **{result['speedup']}x** (float32), "
        f"{result['float64']['speedup']}x (float64).",
        "",
        f"Largest difference between the two paths' perturbations: **{diff64:.1e} in float64** "
        f"(within 1e-4: {result['float64']['outputs_match_1e-4']}), {f32_note}. The computation is the same; "
        f"in float32, convolutions round differently for a batch of 1 and a batch of {len(x)}, and a rounding "
        "difference that crosses a ReLU kink changes a gradient, which the following iterations carry. After "
        f"quantisation, {result['uint8_pixels_differing']} of {result['uint8_pixels_total']} stored pixels "
        f"differ in float32 (by at most {result['uint8_max_diff']} grey level), "
        f"{result['float64']['uint8_pixels_differing']} in float64.",
        "",
        "Timings come from a shared machine and vary between runs; nothing asserts them.",
        "",
    ]
    acc = result.get("deneb_digits_acceptance")
    if acc:
        md += [
            "## DeNeB on the digits setting (acceptance figures)",
            "",
            f"theta_0: the model above (tiny_cnn, {acc['labeled']} labeled digits at {acc['image_size']} px, "
            f"{acc['surrogate_steps']} SGD steps, test accuracy {100 * acc['surrogate_test_accuracy']:.1f}%). "
            f"DeNeB: {acc['steps']} iterations, eps 32/255, trigger {acc['trigger']['size']} x "
            f"{acc['trigger']['size']} at margin {acc['trigger']['margin']}, {acc['sources']} source images per "
            "target (one weak and one strong poison each), measured on the stored uint8 poisons.",
            "",
            "| target | strong poisons -> target | weak poisons keep theta_0's prediction | max |delta| weak / strong (grey levels) | seconds |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in acc["per_target"]:
            md.append(f"| {r['target']} | {100 * r['strong_target_rate']:.1f}% | {100 * r['weak_kept_rate']:.1f}% "
                      f"| {r['max_dev_weak']} / {r['max_dev_strong']} | {r['seconds']} |")
        md += ["", f"Overall: **{100 * acc['strong_target_rate']:.1f}%** of strong poisons classified as the target "
               f"(goal >= 90%), **{100 * acc['weak_kept_rate']:.1f}%** of weak poisons keep theta_0's prediction "
               f"(goal >= 80%); largest deviation {acc['max_dev']} grey levels (eps = 32/255 allows "
               f"{acc['eps_grey_levels']}; respected: {acc['eps_respected']}).", ""]
    md += [f"Total runtime: {result['total_seconds']} s.", ""]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))
    return result


def acceptance(args, targets, split, theta0, trigger_spec) -> dict:
    """Yan et al.'s contrastive poisons on digits, scored with theta_0 itself (see module doc)."""
    eps_levels = int(255 * 32 / 255)  # floor(255 eps)
    rows, strong_hits, weak_hits, n_strong, n_weak = [], 0, 0, 0, 0
    for t in targets:
        t0 = time.perf_counter()
        ps = DeNeBAttack(target=t, seed=args.seed, budget=args.acceptance_sources, trigger=dict(trigger_spec),
                         steps=args.acceptance_steps, progress=False).poison(split, theta0)
        arr = ps.attack["arrays"]
        pos, src, kind = arr["position"], arr["source"], arr["kind"]
        poisons = ps.unlabeled.images[pos]
        clean = split.unlabeled.images[src]
        pred = predict(theta0, poisons.float() / 255)
        clean_pred = predict(theta0, clean.float() / 255)
        strong, weak = kind == 1, kind == 0
        s_hit = int((pred[strong] == t).sum())
        w_hit = int((pred[weak] == clean_pred[weak]).sum())
        trig = quantize(ps.trigger(clean.float() / 255))
        rows.append({
            "target": t,
            "strong_target_rate": s_hit / int(strong.sum()),
            "weak_kept_rate": w_hit / int(weak.sum()),
            "max_dev_weak": int((poisons[weak].int() - clean[weak].int()).abs().max()),
            "max_dev_strong": int((poisons[strong].int() - trig[strong].int()).abs().max()),
            "seconds": round(time.perf_counter() - t0, 1),
        })
        strong_hits, weak_hits = strong_hits + s_hit, weak_hits + w_hit
        n_strong, n_weak = n_strong + int(strong.sum()), n_weak + int(weak.sum())
        print(rows[-1], flush=True)
    max_dev = max(max(r["max_dev_weak"], r["max_dev_strong"]) for r in rows)
    return {
        "image_size": args.image_size,
        "labeled": len(split.labeled),
        "surrogate_steps": args.surrogate_steps,
        "surrogate_test_accuracy": round(accuracy(theta0, split.test), 4),
        "trigger": trigger_spec,
        "steps": args.acceptance_steps,
        "sources": args.acceptance_sources,
        "strong_target_rate": strong_hits / n_strong,
        "weak_kept_rate": weak_hits / n_weak,
        "max_dev": max_dev,
        "eps_grey_levels": eps_levels,
        "eps_respected": bool(max_dev <= eps_levels),
        "per_target": rows,
    }


if __name__ == "__main__":
    main()
