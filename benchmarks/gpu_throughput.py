"""FixMatch training throughput of WRN-28-2 on one GPU, and its share of the GPU's bf16 peak.

The package's own path is timed: :class:`~lightning_ssl_backdoor.ssl.FixMatch` under
``Trainer.fit`` with ``precision="bf16-mixed"`` and ``channels_last=True``, the augmentation on the
device (weak flip + crop and the per-sample RandAugment + Cutout of ``StrongAugment``, in
``on_after_batch_transfer``), EMA and the cosine schedule; FixMatch's defaults B = 64, mu = 7
(Sohn et al. 2020, Sec. 4), so one step forwards B + 2 mu B = 960 images of 32x32 (labeled weak,
unlabeled weak and strong in one concatenated pass, Alg. 1). Each configuration runs with
``torch.compile`` of the backbone off and on (the compiled one warms up longer).

The augmentation is timed apart (``on_after_batch_transfer``, between CUDA events recorded on the
stream, read once at the end, so timing adds no host synchronisation; on a CPU, ``perf_counter``):
``augment_ms_per_step`` and ``model_ms_per_step`` (the rest of the step: forward, backward,
optimiser, EMA, Lightning). ``--compile-augment`` compiles the augmentation as
``model.compile_augment: true`` does.

Reported per configuration: seconds per step (median over the timed steps' blocks), images/s
(forwarded images: 960 per step) and samples/s (B + mu B distinct images per step), the FLOPs of
one step's forward and backward pass of the backbone counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmul / convolution FLOPs, augmentation and the
optimiser excluded), the achieved TFLOP/s, and that as a share of the device's dense bf16 peak
(looked up by device name in ``PEAK_BF16_TFLOPS``, or ``--peak-tflops``).

One command on a GPU machine (about 3-5 minutes; writes ``benchmarks/results/gpu_throughput.json``
and ``.md``):

    PYTHONPATH=. python benchmarks/gpu_throughput.py

Tiny CPU run (what the test does; seconds):

    PYTHONPATH=. python benchmarks/gpu_throughput.py --device cpu --arch tiny_cnn --batch 2 --mu 1 \\
        --image-size 8 --warmup 1 --steps 2 --compile off eager --output /tmp/gpu_throughput
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from lightning_ssl_backdoor._lightning import pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import make_datamodule  # noqa: E402

from lightning_ssl_backdoor.data.artifacts import write_result_pair  # noqa: E402
from lightning_ssl_backdoor.ssl import FixMatch  # noqa: E402
from lightning_ssl_backdoor.utils import quiet_lightning  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: dense (no sparsity) bf16 tensor-core peak in TFLOP/s by a part of the device name; first match wins
PEAK_BF16_TFLOPS = [
    ("GB200", 2500.0), ("B200", 2250.0), ("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0),
    ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
]


def peak_bf16_tflops(name: str) -> Optional[float]:
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def step_flops(module: FixMatch, images: int, image_size: int, device: torch.device) -> int:
    """FLOPs of one forward + backward pass of the backbone over ``images`` images."""
    from torch.utils.flop_counter import FlopCounterMode

    model = module.model
    x = torch.rand(images, 3, image_size, image_size, device=device)
    if module.hparams.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).logsumexp(1).sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


class AugmentTimer:
    """Times ``module.on_after_batch_transfer`` from step ``warmup`` on: CUDA events on the current
    stream (read after the run), or ``perf_counter`` on a CPU."""

    def __init__(self, module: Any, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.events: list[tuple[Any, Any]] = []
        self.cpu_seconds: list[float] = []
        inner = module.on_after_batch_transfer

        def timed(batch: Any, dataloader_idx: int) -> Any:
            if module._trainer is None or module.trainer.global_step < warmup or "labeled" not in batch:
                return inner(batch, dataloader_idx)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = inner(batch, dataloader_idx)
                end.record()
                self.events.append((start, end))
                return out
            t0 = time.perf_counter()
            out = inner(batch, dataloader_idx)
            self.cpu_seconds.append(time.perf_counter() - t0)
            return out

        module.on_after_batch_transfer = timed

    def seconds_per_step(self) -> Optional[float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            times = [s.elapsed_time(e) / 1000.0 for s, e in self.events]
        else:
            times = self.cpu_seconds
        return statistics.median(times) if times else None


class BlockTimer(pl.Callback):
    """Wall time of each block of ``block`` steps after ``warmup`` steps (synchronised ends)."""

    def __init__(self, warmup: int, block: int, device: torch.device) -> None:
        self.warmup, self.block, self.device = warmup, block, device
        self.marks: list[float] = []

    def _mark(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append(time.perf_counter())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self._mark()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = trainer.global_step - self.warmup
        if done > 0 and done % self.block == 0:
            self._mark()

    def seconds_per_step(self) -> list[float]:
        return [(b - a) / self.block for a, b in zip(self.marks, self.marks[1:])]


def run(args: argparse.Namespace, compile_mode: str, device: torch.device) -> dict[str, Any]:
    dm = make_datamodule(args.batch, mu=args.mu, image_size=args.image_size, n=max(1000, 2 * args.batch * (1 + args.mu)))
    torch.manual_seed(0)
    model_args = {"arch": args.arch} if args.arch != "tiny_cnn" else {"arch": "tiny_cnn", "model_kwargs": {"width": 8}}
    module = FixMatch(num_classes=10, in_channels=3, channels_last=args.channels_last, weak_pad=max(1, args.image_size // 8),
                      **model_args).to(device)
    images = args.batch * (1 + 2 * args.mu)
    flops = step_flops(module, images, args.image_size, device)
    if compile_mode != "off":
        module.model = torch.compile(module.model, backend="inductor" if compile_mode == "on" else compile_mode)
    if args.compile_augment:
        module.weak.compile_apply("inductor" if compile_mode in ("off", "on") else compile_mode)
        module.strong.compile_apply("inductor" if compile_mode in ("off", "on") else compile_mode)
    aug_timer = AugmentTimer(module, device, args.warmup)
    timer = BlockTimer(args.warmup, args.block, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_steps=args.warmup + args.steps, val_check_interval=10**9, check_val_every_n_epoch=None,
            limit_val_batches=0, accelerator=device.type, devices=1, precision=args.precision, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, default_root_dir=tmp, callbacks=[timer],
        )
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        total = time.perf_counter() - t0
    per_step = statistics.median(timer.seconds_per_step())
    aug = aug_timer.seconds_per_step()
    achieved = flops / per_step / 1e12
    peak = args.peak_tflops or (peak_bf16_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    return {
        "compile": compile_mode, "precision": args.precision, "channels_last": args.channels_last,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "arch": args.arch, "batch": args.batch, "mu": args.mu, "image_size": args.image_size,
        "images_per_step": images, "samples_per_step": args.batch * (1 + args.mu),
        "seconds_per_step": round(per_step, 5),
        "augment_ms_per_step": None if aug is None else round(1000 * aug, 3),
        "model_ms_per_step": None if aug is None else round(1000 * (per_step - aug), 3),
        "compile_augment": bool(args.compile_augment),
        "seconds_per_step_blocks": [round(s, 5) for s in timer.seconds_per_step()],
        "images_per_s": round(images / per_step, 1), "samples_per_s": round(args.batch * (1 + args.mu) / per_step, 1),
        "flops_per_step": flops, "achieved_tflops": round(achieved, 3),
        "peak_bf16_tflops": peak, "share_of_peak": None if not peak else round(achieved / peak, 4),
        "fit_seconds_incl_warmup": round(total, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# FixMatch training throughput (WRN-28-2 unless stated)", "",
             f"Device: {m['device']}; torch {m['torch']}, Lightning {m['lightning']}. One step forwards "
             "B + 2 mu B images (labeled weak, unlabeled weak, unlabeled strong); augmentation on the device "
             "included; FLOPs = the backbone's forward + backward (FlopCounterMode).", "",
             "| arch | precision | channels_last | compile | B, mu | ms/step | augment ms | model ms | images/s | "
             "samples/s | TFLOP/step | TFLOP/s | bf16 peak | share of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        share = "n/a" if r["share_of_peak"] is None else f"{100 * r['share_of_peak']:.1f}%"
        lines.append(
            f"| {r['arch']} | {r['precision']} | {r['channels_last']} | {r['compile']} | {r['batch']}, {r['mu']} | "
            f"{1000 * r['seconds_per_step']:.2f} | {r.get('augment_ms_per_step') or 'n/a'} | "
            f"{r.get('model_ms_per_step') or 'n/a'} | {r['images_per_s']:.0f} | {r['samples_per_s']:.0f} | "
            f"{r['flops_per_step'] / 1e12:.3f} | {r['achieved_tflops']:.2f} | {r['peak_bf16_tflops'] or 'n/a'} | {share} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--arch", default="wrn28_2")
    ap.add_argument("--batch", type=int, default=64, help="labeled images per step (FixMatch: 64)")
    ap.add_argument("--mu", type=int, default=7)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--channels-last", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    ap.add_argument("--compile", nargs="+", default=["off", "on"],
                    help="off, on (inductor) or another torch.compile backend name (eager: the test's)")
    ap.add_argument("--compile-augment", action="store_true", help="compile the augmentation (fullgraph)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps (compilation happens here)")
    ap.add_argument("--steps", type=int, default=60, help="timed steps")
    ap.add_argument("--block", type=int, default=0, help="steps per timed block (default: steps / 6)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not in the table")
    ap.add_argument("--output", default=str(RESULTS / "gpu_throughput"), help="path stem of the .json / .md")
    args = ap.parse_args(argv)
    args.block = args.block or max(1, args.steps // 6)
    args.steps = max(args.block, args.steps - args.steps % args.block)
    quiet_lightning()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run on a GPU machine, or pass --device cpu for a tiny check.")
    torch.backends.cudnn.benchmark = True
    rows = []
    for mode in args.compile:
        rows.append(run(args, mode, device))
        r = rows[-1]
        print(f"compile={mode}: {1000 * r['seconds_per_step']:.2f} ms/step (augment {r['augment_ms_per_step']} ms), {r['images_per_s']:.0f} images/s, "
              f"{r['achieved_tflops']:.2f} TFLOP/s, share of peak {r['share_of_peak']}", flush=True)
    result = {"rows": rows, "machine": {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "lightning": pl.__version__, "python": platform.python_version()}}
    write_result_pair(args.output, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
