"""What the Lightning path costs over a plain PyTorch loop for the same FixMatch step.

Both paths train the package's :class:`~lightning_ssl_backdoor.ssl.FixMatch` module's model on the
same stream of batches (the package's ``SSLDataModule`` over one seeded split of random 32x32x3
images, ``mu = 7``), with the same augmentation (``WeakAugment`` / ``StrongAugment``), the same
concatenated forward pass and loss (``compute_losses``), SGD with Nesterov momentum, weight decay
on weights only, the cosine schedule and the EMA update (Sohn et al. 2020, Alg. 1 and Sec. 4):

- ``plain``: a hand-written loop: fetch, move to the device, augment, forward, backward, step,
  schedule, EMA.
- ``lightning``: ``Trainer.fit`` configured as ``ssl-backdoor experiment`` trains a row
  (``pipeline.training.train_row``): TensorBoard logger, learning-rate monitor, metric history,
  checkpoint callback (its interval beyond the run), progress bar, ``log_every_n_steps = 25``.
- ``lightning-bare``: ``Trainer.fit`` without logger, callbacks or progress bar (where the cost is).

The time of a step is measured from the start of step ``warmup`` to the end of the last step (in
the Lightning path by a callback's ``on_train_batch_start`` / ``on_train_batch_end``; in the loop
at the same points: after the batch is fetched and augmented, after the EMA update), over
``steps`` steps, with a device synchronisation at both ends. Repeats are interleaved (every path
once per round) so load on a shared machine hits all alike; the median over rounds is reported,
with the spread (max / min - 1) as the noise. The result is the ratio lightning / plain.

    PYTHONPATH=. python benchmarks/step_overhead.py [--repeats 5] [--threads 1] [--device auto]

Writes ``benchmarks/results/step_overhead.json`` and ``.md`` (``--output`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from lightning_ssl_backdoor._lightning import pl
import torch

from lightning_ssl_backdoor.data import SSLDataModule, make_split
from lightning_ssl_backdoor.data.artifacts import write_result_pair
from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.ssl import FixMatch
from lightning_ssl_backdoor.utils import quiet_lightning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_counter import SYNC_KINDS, Counter as SyncCounter  # noqa: E402  (every sync kind)

RESULTS = Path(__file__).resolve().parent / "results"

# (name, model arguments, labeled batch); mu = 7 unlabeled images per labeled one
SETTINGS = [
    ("tiny_cnn (width 16), B=16", {"arch": "tiny_cnn", "model_kwargs": {"width": 16}}, 16),
    ("wrn28_2, B=2", {"arch": "wrn28_2"}, 2),
]
MU = 7


def make_datamodule(batch: int, seed: int = 0, mu: int = MU, image_size: int = 32, n: int = 1000) -> SSLDataModule:
    """One seeded split of ``n`` random ``image_size`` x ``image_size`` x 3 images, 10 classes."""
    g = torch.Generator().manual_seed(seed)
    train = ImageSet(torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g),
                     torch.arange(n) % 10, classes=[str(i) for i in range(10)])
    test = ImageSet(train.images[:100].clone(), train.labels[:100].clone(), classes=train.classes)
    split = make_split(train, test, labels_per_class=10, seed=seed)
    return SSLDataModule(split=split, batch_size=batch, mu=mu, eval_batch_size=100, seed=seed)


def make_module(model_args: dict, seed: int = 0, strong_mode: Optional[str] = None) -> FixMatch:
    """``strong_mode``: StrongAugment's form ("masked": the one an accelerator runs; None: auto)."""
    torch.manual_seed(seed)
    module = FixMatch(num_classes=10, in_channels=3, **model_args)
    if strong_mode is not None:
        module.strong.mode = strong_mode
    return module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


def _per_step(t0: tuple[float, float], t1: tuple[float, float], steps: int) -> tuple[float, float]:
    return (t1[0] - t0[0]) / steps, (t1[1] - t0[1]) / steps


class ItemCounter:
    """Counts ``Tensor.item()`` calls (each a host-device synchronisation on a GPU) while active."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = torch.Tensor.item

    def __enter__(self) -> "ItemCounter":
        orig = self._orig

        def item(t):  # noqa: ANN001
            self.count += 1
            return orig(t)

        torch.Tensor.item = item
        return self

    def __exit__(self, *exc) -> None:
        torch.Tensor.item = self._orig


class StepTimer(pl.Callback):
    def __init__(self, warmup: int, device: torch.device, counter: Optional[ItemCounter] = None) -> None:
        self.warmup, self.device, self.counter = warmup, device, counter
        self.t0 = self.t1 = (0.0, 0.0)
        self.items = [0, 0]
        self.kinds: list[dict[str, int]] = [{}, {}]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync(self.device)
            self.t0 = _now()
            self.items[0] = self.counter.count if self.counter else 0
            self.kinds[0] = self.counter.totals() if hasattr(self.counter, "totals") else {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == trainer.max_steps:
            _sync(self.device)
            self.t1 = _now()
            self.items[1] = self.counter.count if self.counter else 0
            self.kinds[1] = self.counter.totals() if hasattr(self.counter, "totals") else {}


def run_lightning(model_args: dict, batch: int, steps: int, warmup: int, device: torch.device,
                  bare: bool, refresh: Optional[int] = None, counter: Optional[ItemCounter] = None,
                  strong_mode: Optional[str] = None) -> tuple[float, float]:
    """(wall, CPU) seconds per step of ``Trainer.fit`` (configured as ``train_row`` does unless ``bare``;
    ``refresh=1``: Lightning's default progress bar instead of ``train_row``'s)."""
    from lightning_ssl_backdoor._lightning import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from lightning_ssl_backdoor._lightning import TensorBoardLogger

    from lightning_ssl_backdoor.pipeline.training import PROGRESS_REFRESH_STEPS, MetricHistory, SSLProgressBar

    dm, module = make_datamodule(batch), make_module(model_args, strong_mode=strong_mode)
    timer = StepTimer(warmup, device, counter)
    total = warmup + steps
    with tempfile.TemporaryDirectory() as tmp:
        if bare:
            extra: dict[str, Any] = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                         callbacks=[timer])
        else:
            ckpt = ModelCheckpoint(dirpath=tmp, save_last=True, save_top_k=0, every_n_train_steps=10 * total)
            extra = dict(logger=TensorBoardLogger(tmp, name="tb", version=0), enable_progress_bar=True,
                         callbacks=[ckpt, MetricHistory(None), LearningRateMonitor("step"), timer,
                                    TQDMProgressBar() if refresh == 1 else SSLProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS)])
        trainer = pl.Trainer(
            max_steps=total, val_check_interval=10 * total, check_val_every_n_epoch=None, limit_val_batches=0,
            accelerator=device.type, devices=1, precision="32-true", log_every_n_steps=25,
            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp, **extra,
        )
        trainer.fit(module, datamodule=dm)
    run_lightning.items_per_step = (timer.items[1] - timer.items[0]) / steps  # type: ignore[attr-defined]
    run_lightning.kinds_per_step = {  # type: ignore[attr-defined]
        k: (timer.kinds[1][k] - timer.kinds[0][k]) / steps for k in timer.kinds[1]}
    return _per_step(timer.t0, timer.t1, steps)


def run_plain(model_args: dict, batch: int, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds per step of a hand-written loop doing the same work."""
    dm, module = make_datamodule(batch), make_module(model_args)
    module = module.to(device)
    model, ema = module.model, module.ema_model
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": module.hparams.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=module.hparams.lr, momentum=0.9, nesterov=True)
    total = warmup + steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: math.cos(7 * math.pi * k / (16 * total)))
    d = float(module.hparams.ema_decay)
    ema_params, params = list(ema.parameters()), list(model.parameters())
    ema_bufs, bufs = list(ema.buffers()), list(model.buffers())
    model.train()
    ema.train()
    t0 = None
    loader = iter(dm.train_dataloader())
    for step in range(total):
        raw = next(loader)
        x_l = raw["labeled"]["x"].to(device).float().div_(255.0)
        x_u = raw["unlabeled"]["x"].to(device).float().div_(255.0)
        y = raw["labeled"]["y"].to(device)
        lab = {"x": x_l, "weak": module.weak(x_l), "y": y}
        unl = {"x": x_u, "weak": module.weak(x_u), "strong": module.strong(module.weak(x_u))}
        if step == warmup:
            _sync(device)
            t0 = _now()
        loss = module.compute_losses(lab, unl)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_mul_(ema_params, d)
            torch._foreach_add_(ema_params, params, alpha=1.0 - d)
            for be, b in zip(ema_bufs, bufs):
                be.copy_(b)
    _sync(device)
    return _per_step(t0, _now(), steps)


PATHS = ("plain", "lightning", "lightning-bare")


def _stats(times: dict[str, list[float]]) -> dict[str, Any]:
    med = {p: statistics.median(v) for p, v in times.items()}
    return {
        "ms_per_step": {p: round(1000 * m, 3) for p, m in med.items()},
        "ms_per_step_all": {p: [round(1000 * t, 3) for t in v] for p, v in times.items()},
        "noise": {p: round(max(v) / min(v) - 1, 3) for p, v in times.items()},
        "ratio_lightning_over_plain": round(med["lightning"] / med["plain"], 3),
        "ratio_bare_over_plain": round(med["lightning-bare"] / med["plain"], 3),
        # the ratio within each round (the paths ran back to back), then the median over rounds
        "ratio_paired_median": round(statistics.median(a / b for a, b in zip(times["lightning"], times["plain"])), 3),
    }


def measure(name: str, model_args: dict, batch: int, device: torch.device, repeats: int, steps: int,
            warmup: int) -> dict[str, Any]:
    wall: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu: dict[str, list[float]] = {p: [] for p in PATHS}
    for r in range(repeats):
        for p in (PATHS if r % 2 == 0 else PATHS[::-1]):  # interleaved, alternating order
            if p == "plain":
                w, c = run_plain(model_args, batch, steps, warmup, device)
            else:
                w, c = run_lightning(model_args, batch, steps, warmup, device, bare=p == "lightning-bare")
            wall[p].append(w)
            cpu[p].append(c)
    return {
        "setting": name, "device": str(device), "batch": batch, "mu": MU, "images_per_step": batch * (1 + 2 * MU),
        "steps": steps, "warmup": warmup, "repeats": repeats,
        # on a shared CPU the process's CPU time is the steadier measure; on a GPU the wall time is
        "primary": "cpu" if device.type == "cpu" else "wall",
        "wall": _stats(wall), "cpu": _stats(cpu),
    }


def count_syncs(steps: int = 40) -> dict[str, dict[str, float]]:
    """Host syncs per step by kind (:data:`gpu_readiness.SYNC_KINDS`: ``nonzero``, ``item``
    (``_local_scalar_dense``), ``tolist``, tensor ``bool``, data-dependent outputs, host-data tensors)
    from the start of one training batch to its end, in the Lightning path with Lightning's default
    progress bar (values logged with ``prog_bar=True``, redrawn every step), with ``train_row``'s
    (:class:`SSLProgressBar`: reads the values every ``PROGRESS_REFRESH_STEPS``), and without logger
    and progress bar (tiny CNN, CPU, strong augmentation in the form an accelerator runs; the counts
    do not depend on the device)."""
    name, model_args, batch = SETTINGS[0]
    out = {}
    for label, refresh, bare in (("Lightning's progress bar", 1, False), ("train_row's SSLProgressBar", None, False),
                                 ("bare", None, True)):
        with SyncCounter() as counter:
            run_lightning(model_args, 4, steps, 1, torch.device("cpu"), bare=bare, refresh=refresh, counter=counter,
                          strong_mode="masked")
        out[label] = {k: run_lightning.kinds_per_step.get(k, 0.0) for k in SYNC_KINDS}  # type: ignore[attr-defined]
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (CPU, plus CUDA when present)")
    ap.add_argument("--tiny-steps", type=int, default=40)
    ap.add_argument("--wrn-steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", choices=["tiny", "wrn", "syncs"], default=None, help="run one part")
    ap.add_argument("--output", default=str(RESULTS / "step_overhead"), help="path stem of the .json / .md")
    ap.add_argument("--note", default="", help="a sentence about the machine, written into the .md")
    args = ap.parse_args(argv)
    quiet_lightning()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "auto") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    rows = []
    syncs = count_syncs() if args.only in (None, "syncs") else {}
    print("host syncs per step by kind:", syncs, flush=True)
    for device in devices if args.only != "syncs" else []:
        for (name, model_args, batch), steps in zip(SETTINGS, (args.tiny_steps, args.wrn_steps)):
            if args.only and not name.startswith({"tiny": "tiny", "wrn": "wrn"}[args.only]):
                continue
            b = batch if device.type == "cpu" else batch * 4  # a GPU at B=2 would time Python only
            rows.append(measure(name if b == batch else name.replace(f"B={batch}", f"B={b}"), model_args, b,
                                device, args.repeats, steps if device.type == "cpu" else 4 * steps, args.warmup))
            r = rows[-1]
            print(r["setting"], r["device"], "wall", json.dumps(r["wall"]["ms_per_step"]),
                  r["wall"]["ratio_lightning_over_plain"], "cpu", json.dumps(r["cpu"]["ms_per_step"]),
                  r["cpu"]["ratio_lightning_over_plain"], flush=True)
    result = {
        "rows": rows,
        "machine": {"cpu_threads_used": args.threads, "cpus_visible": __import__("os").cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "lightning": pl.__version__},
        "goal": "lightning / plain <= 1.10",
        "syncs_per_step": syncs,
        "note": args.note,
    }
    write_result_pair(args.output, result, markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# Step overhead: Lightning path vs a plain PyTorch loop (FixMatch)", "",
             f"torch {m['torch']}, Lightning {m['lightning']}, {m['cpu_threads_used']} torch thread(s) of "
             f"{m['cpus_visible']} visible CPUs; GPU: {m['gpu'] or 'none'}. Goal: {result['goal']}.", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    lines += [
             "Times are medians over interleaved rounds, in ms per step; `cpu` is the process's CPU time "
             "(all threads), `wall` the elapsed time; noise = max / min - 1 over the rounds (worst path).", "",
             "| setting | device | clock | plain ms | lightning ms | bare ms | lightning / plain | "
             "paired median | bare / plain | noise |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        for clock in ("cpu", "wall"):
            s = r[clock]
            ms, nz = s["ms_per_step"], s["noise"]
            mark = " (primary)" if clock == r["primary"] else ""
            lines.append(
                f"| {r['setting']} ({r['images_per_step']} img/step) | {r['device']} | {clock}{mark} | {ms['plain']:.2f} | "
                f"{ms['lightning']:.2f} | {ms['lightning-bare']:.2f} | {s['ratio_lightning_over_plain']:.3f} | "
                f"{s['ratio_paired_median']:.3f} | {s['ratio_bare_over_plain']:.3f} | {max(nz.values()):.0%} |")
    if result.get("syncs_per_step"):
        lines += ["", "Host synchronisations per training step in the Lightning path, by kind (each one stalls the "
                  "queueing of the next kernels on a GPU; `benchmarks/gpu_readiness.py` counts the augmentation):", ""]
        for k, v in result["syncs_per_step"].items():
            shown = ", ".join(f"{kind} {n:.2f}" for kind, n in v.items() if n) if isinstance(v, dict) else f"{v:.2f}"
            lines.append(f"- {k}: {shown or 'none'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
