"""Throughput of the batched, per-sample StrongAugment against a per-image PIL RandAugmentMC.

Both sides run FixMatch's strong policy (Sohn et al., 2020): RandAugmentMC(n=2, m=10) with every
op applied with probability 0.5, then a 16 px gray Cutout, on the same batch of 32x32x3 images in
the same process. The torch side starts from a uint8 ``[B, 3, H, W]`` tensor (as a DataModule
yields it) and includes the conversion to float; the PIL side starts from uint8 ``H x W x 3``
arrays and returns a stacked uint8 array (what a DataLoader worker would do, minus collation).
WeakAugment (flip + reflect-pad-4 crop) is timed as well. Warm-up runs, then ``--repeats`` timed
rounds that run every implementation once (interleaved, so load on a shared machine hits all
alike); the median (and the minimum) is reported. Nothing asserts on time. The torch side is built
on Kornia's functional ops (``lightning_ssl_backdoor.augment.ops``).

The bar is the one-thread row: the batched StrongAugment must process at least as many images per
second as the per-image PIL policy, both on one CPU thread. Measure it on one thread:

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/augment_speed.py --threads 1 [--batch 448]

(``--threads N`` adds rows with N torch threads; the one-thread rows are always timed.)

Writes ``benchmarks/results/augment_speed.json`` and ``.md`` (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import kornia
import numpy as np
import PIL
import torch
from PIL import Image, ImageEnhance, ImageOps

from lightning_ssl_backdoor.augment import StrongAugment, WeakAugment

RESULTS = Path(__file__).resolve().parent / "results"
GRAY = (128, 128, 128)

# ------------------------------------------------------------------ per-image PIL reference policy
# level v in [1, m]; r = v / m; same magnitude table as lightning_ssl_backdoor.augment.op_magnitude.


def _signed(value: float) -> float:
    return -value if random.random() < 0.5 else value


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, fillcolor=GRAY)


def _pil_ops() -> list[Callable[[Image.Image, float], Image.Image]]:
    enhance = lambda cls: (lambda img, r: cls(img).enhance(0.9 * r + 0.05))  # noqa: E731
    return [
        lambda img, r: ImageOps.autocontrast(img),
        enhance(ImageEnhance.Brightness),
        enhance(ImageEnhance.Color),
        enhance(ImageEnhance.Contrast),
        lambda img, r: ImageOps.equalize(img),
        lambda img, r: img,
        lambda img, r: ImageOps.posterize(img, 4 + int(4 * r)),
        lambda img, r: img.rotate(_signed(30 * r), fillcolor=GRAY),
        enhance(ImageEnhance.Sharpness),
        lambda img, r: _affine(img, (1, _signed(0.3 * r), 0, 0, 1, 0)),
        lambda img, r: _affine(img, (1, 0, 0, _signed(0.3 * r), 1, 0)),
        lambda img, r: ImageOps.solarize(img, int(256 - 256 * r)),
        lambda img, r: _affine(img, (1, 0, _signed(0.3 * r) * img.size[0], 0, 1, 0)),
        lambda img, r: _affine(img, (1, 0, 0, 0, 1, _signed(0.3 * r) * img.size[1])),
    ]


def pil_strong(arrays: np.ndarray, n: int = 2, m: float = 10, p: float = 0.5) -> np.ndarray:
    """RandAugmentMC(n, m) + Cutout(0.5) applied image by image with PIL; uint8 in, uint8 out."""
    ops = _pil_ops()
    out = np.empty_like(arrays)
    for i, arr in enumerate(arrays):
        img = Image.fromarray(arr)
        for op in random.choices(ops, k=n):
            level = random.uniform(1, m)
            if random.random() < p:
                img = op(img, level / m)
        a = np.array(img)
        h, w = a.shape[:2]
        side = int(round(0.5 * min(h, w)))
        cy, cx = random.randrange(h), random.randrange(w)
        t, l = max(0, cy - side // 2), max(0, cx - side // 2)
        a[t : cy - side // 2 + side, l : cx - side // 2 + side] = 128
        out[i] = a
    return out


# ------------------------------------------------------------------ timing


def interleaved_times(
    fns: dict, warmup: int, repeats: int, cuda: bool = False
) -> dict[tuple, list]:
    """Time every ``(threads, function)`` once per round, round after round, so that load from
    other processes on a shared machine hits all of them alike (torch's CPU thread count is set
    before each, untimed); returns the per-round seconds of each."""
    for _ in range(warmup):
        for threads, fn in fns.values():
            torch.set_num_threads(threads)
            fn()
    times: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, (threads, fn) in fns.items():
            torch.set_num_threads(threads)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(batch: int, size: int, warmup: int, repeats: int, threads: int) -> dict:
    """Time every implementation; torch's thread count is restored afterwards."""
    before = torch.get_num_threads()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        res = _run(batch, size, warmup, repeats, threads)
    finally:
        torch.set_num_threads(before)
    load_after = os.getloadavg()[0] if load_before is not None else None
    res["load_average_1min"] = [load_before, load_after]
    return res


def _run(batch: int, size: int, warmup: int, repeats: int, threads: int) -> dict:
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    strong, weak = StrongAugment(n=2, m=10, p=0.5, cutout=0.5), WeakAugment()
    random.seed(0)
    torch.manual_seed(0)

    rows = []

    def add(impl: str, device: str, threads: int, times: list) -> None:
        med = statistics.median(times)
        if impl.startswith("PIL"):
            threads = None  # PIL runs on one thread whatever torch's setting
        rows.append({"implementation": impl, "device": device, "torch_threads": threads,
                     "median_s": med, "min_s": min(times), "images_per_s": batch / med,
                     "times_s": times})

    x_cpu = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    fns = {("PIL per image (RandAugmentMC + Cutout)", "cpu", 1): (1, lambda: pil_strong(arrays))}
    for t in sorted({1, threads}):
        fns[("StrongAugment (batched, per sample)", "cpu", t)] = (
            t, lambda: strong(x_cpu.float() / 255))
        fns[("WeakAugment (batched, per sample)", "cpu", t)] = (
            t, lambda: weak(x_cpu.float() / 255))
    for (impl, dev, t), times in interleaved_times(fns, warmup, repeats).items():
        add(impl, dev, t, times)
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        x_gpu = x_cpu.cuda()
        fns = {
            ("StrongAugment (batched, per sample)", "cuda"): (
                threads, lambda: strong(x_gpu.float() / 255)),
            ("WeakAugment (batched, per sample)", "cuda"): (
                threads, lambda: weak(x_gpu.float() / 255)),
        }
        for (impl, dev), times in interleaved_times(fns, warmup, repeats, cuda=True).items():
            add(impl, dev, threads, times)
    one = next(r for r in rows if r["implementation"].startswith("Strong") and r["torch_threads"] == 1)
    pil = next(r for r in rows if r["implementation"].startswith("PIL"))
    return {
        "benchmark": "augment_speed",
        "bar": "StrongAugment on 1 torch thread >= PIL per image (images / s)",
        "bar_ratio": one["images_per_s"] / pil["images_per_s"],
        "bar_met": one["images_per_s"] >= pil["images_per_s"],
        "batch_size": batch,
        "image_shape": [3, size, size],
        "policy": "RandAugmentMC n=2 m=10 p=0.5 over the 14 FixMatch ops, Cutout 0.5",
        "warmup": warmup,
        "repeats": repeats,
        "statistic": "median",
        "torch_version": torch.__version__,
        "pillow_version": PIL.__version__,
        "kornia_version": kornia.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "torch_threads": threads,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "rows": rows,
        "note": "CPU shared with other engineers' jobs while measured; absolute numbers are noisy.",
    }


def _fmt_load(load: list) -> str:
    return " / ".join("n/a" if v is None else f"{v:.2f}" for v in load)


def markdown(res: dict) -> str:
    pil = next(r for r in res["rows"] if r["implementation"].startswith("PIL"))
    lines = [
        "# Augmentation throughput",
        "",
        f"Batch {res['batch_size']} of {'x'.join(map(str, res['image_shape']))} uint8 images, "
        f"{res['policy']}; median of {res['repeats']} runs after {res['warmup']} warm-up runs.",
        "",
        f"torch {res['torch_version']}, Kornia {res.get('kornia_version', 'n/a')}, "
        f"Pillow {res['pillow_version']}, "
        f"up to {res['torch_threads']} torch thread(s), CPU: {res['cpu']} "
        f"({res['cpu_count']} cores visible), CUDA: {res['cuda_device'] or 'not available'}. "
        f"1-minute load average before / after: {_fmt_load(res['load_average_1min'])}.",
        "",
        f"Bar: {res['bar']}: {res['bar_ratio']:.1f}x, "
        f"{'met' if res['bar_met'] else 'NOT met'}.",
        "",
        "| implementation | device | torch threads | median s / batch | min s / batch "
        "| images / s (median) | strong vs PIL |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["rows"]:
        strong = not r["implementation"].startswith("Weak")
        ratio = f"{r['images_per_s'] / pil['images_per_s']:.1f}x" if strong else "n/a"
        lines.append(
            f"| {r['implementation']} | {r['device']} | {r['torch_threads'] or 'n/a'} | "
            f"{r['median_s']:.4f} | {r['min_s']:.4f} | "
            f"{r['images_per_s']:,.0f} | {ratio} |"
        )
    lines += [
        "",
        "The CPU was shared with other engineers' jobs while this ran, so absolute numbers are "
        "noisy; the implementations are timed in interleaved rounds in one process so that the "
        "load hits them alike, and the ratio between rows is the meaningful part. The PIL "
        "row is single-process, one image at a time (a DataLoader would spread it over workers). "
        "When other jobs occupy the cores, the multi-threaded torch rows suffer most: every one of "
        "the many small batched kernels waits for all its threads, so a busy machine can make them "
        "slower than one thread. The CUDA rows appear only where a GPU is present. "
        "The torch rows run Kornia's functional ops with per-sample magnitudes, one batched call "
        "per (slot, operation) on the images that drew it. "
        "Regenerate with `OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/augment_speed.py "
        "--threads 1`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=448)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for the multi-threaded rows (default: torch's); "
                         "single-threaded rows are always timed too")
    ap.add_argument("--output-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    threads = args.threads or torch.get_num_threads()
    res = run(args.batch, args.size, args.warmup, args.repeats, threads)
    md = markdown(res)
    atomic_write(args.output_dir / "augment_speed.json", json.dumps(res, indent=2) + "\n")
    atomic_write(args.output_dir / "augment_speed.md", md)
    print(md)


if __name__ == "__main__":
    main()
