"""Is the training step GPU-ready? Host syncs, kernel-like ops, dispatch share and graph breaks,
measured on the CPU (issue 32; no GPU is lent to this project).

Per training step of each algorithm (the module's own ``on_after_batch_transfer`` augmentation,
``training_step``, backward, SGD step and EMA update, outside a Trainer so Lightning's own work is
not counted), with WRN-28-2 and the tiny CNN:

- **host syncs by kind**, counted by a ``TorchDispatchMode`` and by wrapping ``Tensor.item`` /
  ``tolist`` / ``__bool__`` / ``__int__`` / ``__float__``: ``nonzero`` (also the one inside a
  boolean-mask index), ``item`` (``_local_scalar_dense`` not from ``bool``), ``tolist``, tensor
  ``bool``, data-dependent outputs (``masked_select``, ``unique``, ``bincount``, boolean
  ``index_put_``), and tensors built from host data (``torch.tensor(...)``: a blocking copy on CUDA);
- **kernel-like ops**: every aten op the dispatcher runs, less views, allocations without a fill
  (``empty``), ``detach`` and host-side 0-dim wrapped numbers (``scalar_tensor``), for the
  augmentation (``on_after_batch_transfer``) and the model (forward, backward, optimiser, EMA) apart;
- the augmentation at FixMatch's sizes (B = 64, mu = 7: weak on 64, weak on 448, strong on 448),
  the model part at B = 4, mu = 7 (counts do not depend on the batch size);
- **dispatch share**: CPU time of the FixMatch augmentation at 8 px over 32 px, same batch sizes;
- **graph breaks** under ``torch._dynamo.explain`` of the augmentation and of ``training_step``;
- **augmentation CPU time** at batch 448 (weak + strong on 448, weak on 64), 1 thread.

Strong augmentation is measured in the form a GPU runs (``mode="masked"`` where the code has it;
the code before issue 32 has only the grouped form) and, for the CPU time, also in the CPU default.

    PYTHONPATH=. python benchmarks/gpu_readiness.py --before /tmp/before   # both trees, one run

``--before TREE`` measures a checkout of the code before the change in a subprocess (its
``lightning_ssl_backdoor``, this file's counters), interleaving the timing rounds with this tree's.
Writes ``benchmarks/results/gpu_readiness.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ALGORITHMS = ("fixmatch", "flexmatch", "uda", "mixmatch", "pseudo_label", "pi_model", "mean_teacher", "vat",
              "supervised")
ARCHS = {"wrn28_2": {"arch": "wrn28_2"}, "tiny_cnn": {"arch": "tiny_cnn", "model_kwargs": {"width": 16}}}
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_counter import SYNC_KINDS, Counter  # noqa: E402


# ----------------------------------------------------------------------------- building a step
def make_batch(b: int, mu: int, size: int, seed: int = 0, num_classes: int = 10) -> dict:
    g = torch.Generator().manual_seed(seed)
    img = lambda n: torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)  # noqa: E731
    return {"labeled": {"x": img(b), "y": torch.arange(b) % num_classes, "idx": torch.arange(b)},
            "unlabeled": {"x": img(mu * b), "idx": torch.arange(mu * b)}}


def make_module(algorithm: str, arch: str, size: int = 32, strong_mode: Optional[str] = "masked"):
    from lightning_ssl_backdoor.ssl import ALGORITHMS as ALGOS

    torch.manual_seed(0)
    cls = ALGOS[algorithm]
    module = cls(num_classes=10, in_channels=3, weak_pad=max(1, size // 8), **ARCHS[arch])
    if strong_mode is not None and hasattr(module.strong, "mode"):
        module.strong.mode = strong_mode  # the form a GPU runs
    if hasattr(module, "reset_state"):
        module.reset_state(10_000)
    return module


def optimizer(module):
    conf = module.configure_optimizers()
    return conf["optimizer"] if isinstance(conf, dict) else conf


def train_step(module, opt, batch: dict) -> None:
    loss = module.training_step(batch, 0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    module.update_ema()


def count_step(algorithm: str, arch: str, b: int = 4, mu: int = 7) -> dict[str, Any]:
    """Syncs and kernel-like ops of the augmentation (at FixMatch's sizes) and of the model part."""
    module = make_module(algorithm, arch)
    opt = optimizer(module)
    train_step(module, opt, module.on_after_batch_transfer(make_batch(b, mu, 32), 0))  # warm-up (lazy state)
    with Counter() as aug:
        module.on_after_batch_transfer(make_batch(64, 7, 32, seed=1), 0)
    batch = module.on_after_batch_transfer(make_batch(b, mu, 32, seed=2), 0)
    with Counter() as model:
        train_step(module, opt, batch)
    syncs = {k: aug.syncs[k] + model.syncs[k] for k in SYNC_KINDS}
    return {"algorithm": algorithm, "arch": arch, "syncs": syncs, "syncs_total": sum(syncs.values()),
            "syncs_augment": dict(aug.syncs), "syncs_model": dict(model.syncs),
            "kernels_augment": aug.kernels, "kernels_model": model.kernels,
            "top_augment_ops": sorted(aug.ops.items(), key=lambda kv: -kv[1])[:8]}


def augment_cpu_ms(size: int, repeats: int, strong_mode: Optional[str]) -> float:
    """Median CPU ms of FixMatch's augmentation (weak 64, weak 448, weak + strong 448)."""
    module = make_module("fixmatch", "tiny_cnn", size=size, strong_mode=strong_mode)
    batch = make_batch(64, 7, size, seed=3)
    module.on_after_batch_transfer(batch, 0)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        module.on_after_batch_transfer(batch, 0)
        times.append(time.process_time() - t0)
    return 1000 * statistics.median(times)


def _explain(fn, *args) -> dict[str, Any]:
    import torch._dynamo as dynamo

    dynamo.reset()
    try:
        ex = dynamo.explain(fn)(*args)
        return {"graph_breaks": ex.graph_break_count, "graphs": ex.graph_count,
                "reasons": sorted({str(r.reason).split("\n")[0][:120] for r in ex.break_reasons})[:8]}
    except Exception as e:  # noqa: BLE001  (the old code may not trace at all)
        return {"graph_breaks": None, "graphs": None, "reasons": [f"fails to trace: {type(e).__name__}: "
                                                                   f"{str(e).splitlines()[0][:160]}"]}
    finally:
        dynamo.reset()


def graph_breaks(algorithm: str = "fixmatch", arch: str = "tiny_cnn") -> dict[str, Any]:
    """Graph breaks of the augmentation (``on_after_batch_transfer``) and of ``training_step``
    (static shapes: each batch size its own graph)."""
    import torch._dynamo as dynamo

    dynamo.config.automatic_dynamic_shapes = False
    module = make_module(algorithm, arch, strong_mode=None)  # auto: the masked form under compile
    raw = make_batch(4, 7, 32, seed=4)
    out = {"augment": _explain(module.on_after_batch_transfer, raw, 0)}
    batch = module.on_after_batch_transfer(raw, 0)
    out["training_step"] = _explain(module.training_step, batch, 0)
    return out


def inductor_kernels(b: int = 448, size: int = 32) -> dict[str, Any]:
    """Kernels inductor generates (CPU C++ codegen; ``torch._inductor.metrics``) for weak + strong on
    ``b`` images under ``compile_apply`` (what ``model.compile_augment: true`` runs), and the largest
    pixel difference from the eager masked form. Costs a C++ build (minutes on a loaded 2-core CPU)."""
    import torch._inductor.metrics as metrics

    from lightning_ssl_backdoor.augment import StrongAugment, WeakAugment

    x = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(0))
    weak, strong = WeakAugment(), StrongAugment()
    wp = weak.sample_params(b, generator=torch.Generator().manual_seed(1))
    sp = strong.sample_params(b, size, size, generator=torch.Generator().manual_seed(2))
    eager = StrongAugment(mode="masked").apply_params(weak.apply_params(x, wp), sp)
    weak.compile_apply("inductor")
    strong.compile_apply("inductor")
    metrics.reset()
    out = strong.apply_params(weak.apply_params(x, wp), sp)
    return {"generated_kernels": int(metrics.generated_kernel_count),
            "vectorised": int(getattr(metrics, "generated_cpp_vec_kernel_count", -1)),
            "max_abs_diff_vs_eager": float((out - eager).abs().max())}


def fit_hash(steps: int = 6) -> str:
    """sha256 (16 hex) of the state dict after a seeded ``steps``-step FixMatch fit on the CPU (tiny
    CNN, 16 px, 4 classes): equal before and after means CPU training is bit-for-bit unchanged."""
    import hashlib
    import tempfile

    from lightning_ssl_backdoor._lightning import pl
    from lightning_ssl_backdoor.data import SSLDataModule, make_split
    from lightning_ssl_backdoor.data.imageset import ImageSet
    from lightning_ssl_backdoor.ssl import FixMatch
    from lightning_ssl_backdoor.utils import quiet_lightning

    quiet_lightning()
    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.randint(0, 256, (400, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(400) % 4,
                     classes=list("abcd"))
    dm = SSLDataModule(split=make_split(train, train, labels_per_class=10, seed=0), batch_size=8, mu=3,
                       eval_batch_size=100, seed=0)
    pl.seed_everything(0)
    m = FixMatch(arch="tiny_cnn", num_classes=4, in_channels=3, weak_pad=2, model_kwargs={"width": 8}, threshold=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        pl.Trainer(max_steps=steps, limit_val_batches=0, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, default_root_dir=tmp).fit(m, datamodule=dm)
    h = hashlib.sha256()
    for k, v in sorted(m.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import lightning_ssl_backdoor

    rows = [count_step(a, arch) for arch in ARCHS for a in ALGORITHMS]
    res: dict[str, Any] = {"code": str(Path(lightning_ssl_backdoor.__file__).parent.parent), "rows": rows}
    res["augment_ms_32px"] = augment_cpu_ms(32, args.repeats, "masked")
    res["augment_ms_8px"] = augment_cpu_ms(8, args.repeats, "masked")
    res["fit_hash"] = fit_hash()
    if not args.skip_explain:
        res["graph_breaks"] = graph_breaks()
    if args.inductor and hasattr(__import__("lightning_ssl_backdoor.augment.weak", fromlist=["x"]).WeakAugment,
                                 "compile_apply"):
        res["inductor"] = inductor_kernels()
    return res


def timing(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    return {"gpu_form": augment_cpu_ms(32, args.repeats, "masked"), "cpu_default": augment_cpu_ms(32, args.repeats, None)}


def _run_tree(tree: str, *flags: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, *flags], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(result: dict[str, Any]) -> str:
    before, after = result["before"], result["after"]
    lines = ["# GPU readiness of the training step, measured on the CPU (issue 32)", "",
             "Per training step (augmentation at B = 64, mu = 7; model part at B = 4, mu = 7: counts do not depend "
             "on the batch). `before`: commit " + result["before_commit"] + ", `after`: commit "
             + result.get("after_commit", "?") + ". Strong augmentation "
             "in the form a GPU runs (after: `mode=\"masked\"`; before: the only, grouped form). Syncs: nonzero / item / "
             "tolist / bool / data-dependent / host tensor. Counted by `benchmarks/gpu_readiness.py` "
             "(TorchDispatchMode + Tensor method wrappers, CPU, torch " + torch.__version__ + ").", "",
             "| algorithm | arch | syncs before | syncs after (by kind) | aug ops before | aug ops after | "
             "model ops before | model ops after |", "|---|---|---|---|---|---|---|---|"]
    for rb, ra in zip(before["rows"], after["rows"]):
        kinds = ", ".join(f"{k} {v}" for k, v in ra["syncs"].items() if v) or "none"
        lines.append(f"| {ra['algorithm']} | {ra['arch']} | {rb['syncs_total']} | {ra['syncs_total']} ({kinds}) | "
                     f"{rb['kernels_augment']} | {ra['kernels_augment']} | {rb['kernels_model']} | "
                     f"{ra['kernels_model']} |")
    t = result["timing"]
    lines += ["", "## Dispatch share and CPU time (1 thread, FixMatch augmentation: weak 64 + weak 448 + weak/strong 448)",
              "", "| | before | after |", "|---|---|---|",
              f"| CPU ms at 32 px (GPU form) | {before['augment_ms_32px']:.1f} | {after['augment_ms_32px']:.1f} |",
              f"| CPU ms at 8 px (GPU form) | {before['augment_ms_8px']:.1f} | {after['augment_ms_8px']:.1f} |",
              f"| 8 px / 32 px (dispatch share) | {before['augment_ms_8px'] / before['augment_ms_32px']:.2f} | "
              f"{after['augment_ms_8px'] / after['augment_ms_32px']:.2f} |", "",
              f"Interleaved timing rounds ({t['rounds']} each, median CPU ms, 32 px): before {t['before_ms']:.1f}; after, "
              f"CPU default form {t['after_cpu_default_ms']:.1f} (ratio **{t['ratio_cpu_default']:.2f}**), "
              f"GPU form {t['after_gpu_form_ms']:.1f} (ratio **{t['ratio_gpu_form']:.2f}**).", ""]
    fix = {r["algorithm"]: r for r in after["rows"] if r["arch"] == "wrn28_2"}["fixmatch"]
    fix_before = {r["algorithm"]: r for r in before["rows"] if r["arch"] == "wrn28_2"}["fixmatch"]
    lines += ["## Goals", "",
              "| goal | before | after | met |", "|---|---|---|---|",
              f"| 0 host syncs per step, every algorithm | FixMatch {fix_before['syncs_total']} | "
              f"{sum(1 for r in after['rows'] if r['syncs_total'] == 0)} of {len(after['rows'])} rows at 0 | "
              f"{'yes' if all(r['syncs_total'] == 0 for r in after['rows']) else 'no: named below'} |",
              f"| <= 200 kernel-like augmentation ops per FixMatch step (eager) | {fix_before['kernels_augment']} | "
              f"{fix['kernels_augment']} | {'yes' if fix['kernels_augment'] <= 200 else 'no (eager); see compile below'} |"]
    gb_after = after.get("graph_breaks", {}).get("augment", {}).get("graph_breaks")
    gb_before = before.get("graph_breaks", {}).get("augment", {}).get("graph_breaks")
    lines.append(f"| 0 graph breaks in weak + strong augmentation | {gb_before} | {gb_after} | "
                 f"{'yes' if gb_after == 0 else 'no'} |")
    lines.append(f"| augmentation CPU time at 448, 1 thread, no worse | 1.00 | CPU default {t['ratio_cpu_default']:.2f}, "
                 f"GPU form {t['ratio_gpu_form']:.2f} | {'yes (default form)' if t['ratio_cpu_default'] <= 1.0 else 'no'}"
                 f"{'; the GPU form is slower on a CPU' if t['ratio_gpu_form'] > 1.0 else ''} |")
    ind = after.get("inductor") or result.get("inductor")
    if ind:
        lines += ["", f"Compiled (`model.compile_augment: true`, inductor, CPU C++ codegen): weak + strong on 448 images "
                  f"become **{ind['generated_kernels']} generated kernels** ({ind['vectorised']} vectorised) plus "
                  f"inductor's extern calls (grid_sample, scatter_add, cumsum, gather); largest pixel difference from the "
                  f"eager masked form {ind['max_abs_diff_vs_eager']:.1e} (fused float arithmetic moves values that sit "
                  f"within rounding of an 8-bit tie in Equalize / Posterize / Solarize)."]
    remaining = [(r["algorithm"], r["arch"], {k: v for k, v in r["syncs"].items() if v}) for r in after["rows"]
                 if r["syncs_total"]]
    if remaining:
        lines += ["", "Syncs left (after), by row: " + "; ".join(f"{a} / {arch}: {k}" for a, arch, k in remaining)
                  + ". Their sources are named in the notes below.", ""]
    if before.get("fit_hash") and after.get("fit_hash"):
        same = before["fit_hash"] == after["fit_hash"]
        lines += [f"CPU training {'is bit-for-bit unchanged' if same else 'changed'}: a seeded 6-step FixMatch fit "
                  f"(tiny CNN, CPU, Trainer) ends with state-dict hash {before['fit_hash']} before and "
                  f"{after['fit_hash']} after" + (" (the CPU keeps the grouped strong form and the global RNG; "
                  "the gather crop and the foreach EMA copy are exact), so the CPU experiments' numbers "
                  "(e.g. cifar10_pal) are unchanged by this work." if same else "."), ""]
    lines += NOTES
    for name, res in (("before", before), ("after", after)):
        gb = res.get("graph_breaks")
        if gb:
            lines.append(f"Graph breaks ({name}, FixMatch, tiny CNN, `torch._dynamo.explain`): augmentation "
                         f"{gb['augment']['graph_breaks']}, training_step {gb['training_step']['graph_breaks']}.")
            for part in ("augment", "training_step"):
                for r in gb[part]["reasons"]:
                    lines.append(f"  - {part}: {r}")
    return "\n".join(lines) + "\n"


NOTES = [
    "## Notes", "",
    "- Counts are per training step outside a Trainer; `benchmarks/step_overhead.py` counts the Lightning path "
    "(train_row's progress bar: 0 syncs of any kind per step with the masked strong form).",
    "- FlexMatch (ssl/flexmatch.py): `selected_label[idx[sel]] = pred[sel]` (a boolean-mask index and write: "
    "2 nonzero), `torch.bincount` (its output size needs the maximum: data-dependent on CUDA) and "
    "`int(counts.max())` in `learning_effect`. Sync-free form: `selected_label[idx] = torch.where(sel, pred, "
    "selected_label[idx])`, counts by `scatter_add_` into `num_classes + 1` bins, and the two early returns "
    "as `torch.where` on the device.",
    "- MixMatch: two `.item()` from `F.one_hot`'s class-range check (min / max; PyTorch skips it on CUDA "
    "when `num_classes` is given and relies on a device assert) and the mix-up seed "
    "`torch.randint(..., generator).item()` in `losses.mixup`, drawn on the generator's device (the CPU for the "
    "global generator: a host-side read, no device sync).",
    "- The CPU default of `StrongAugment` stays grouped (each op on the images that drew it): on a CPU the masked "
    "form's arithmetic on every image costs more than the dispatch it saves; both forms give the same pixels "
    "(tests/test_augment_static.py). The weak crop is one gather in both (bit-equal to the old crop).",
    "- Kernel-like op = an aten op the dispatcher runs, less views, `empty`, `detach` and host-side 0-dim "
    "wrapped numbers. The eager masked form needs about 70 per RandAugment slot (the luma, the smoothing, "
    "the 256-level table of Equalize / Posterize, one warp); compiled, they fuse.", ""]


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=None, help="a checkout of the code before the change")
    ap.add_argument("--after", default=None, help="a checkout of the code after it (default: this file's tree)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-explain", action="store_true")
    ap.add_argument("--inductor", action="store_true", help="also count inductor's kernels (a C++ build, minutes)")
    ap.add_argument("--from-json", default=None, help="write the .md from a saved .json")
    ap.add_argument("--child", choices=["measure", "timing", "fithash"], default=None)
    ap.add_argument("--fit-hash", nargs=2, default=None, metavar=("BEFORE", "AFTER"),
                    help="with --from-json: add the CPU fit hashes of two trees to the saved result")
    ap.add_argument("--output", default=str(RESULTS / "gpu_readiness"))
    args = ap.parse_args(argv)
    if args.from_json:
        from lightning_ssl_backdoor.data.artifacts import atomic_write_text

        result = json.loads(Path(args.from_json).read_text())
        if args.fit_hash:
            from lightning_ssl_backdoor.data.artifacts import atomic_write_json

            for name, tree in zip(("before", "after"), args.fit_hash):
                result[name]["fit_hash"] = _run_tree(tree, "--child", "fithash")["fit_hash"]
            atomic_write_json(Path(args.from_json), result)
        atomic_write_text(Path(args.output).with_suffix(".md"), markdown(result))
        return result
    if args.child:
        out = {"measure": measure, "timing": timing, "fithash": lambda a: {"fit_hash": fit_hash()}}[args.child](args)
        print(json.dumps(out))
        return {}
    here = str(Path(__file__).resolve().parent.parent)
    trees = {"after": args.after or here, "before": args.before or here}
    flags = ["--repeats", str(args.repeats)] + (["--skip-explain"] if args.skip_explain else []) \
        + (["--inductor"] if args.inductor else [])
    result: dict[str, Any] = {name: _run_tree(tree, "--child", "measure", *flags) for name, tree in trees.items()}
    rounds: dict[str, list[float]] = {"before": [], "after_gpu": [], "after_cpu": []}
    for _ in range(args.rounds):
        rounds["before"].append(_run_tree(trees["before"], "--child", "timing", *flags)["gpu_form"])
        t = _run_tree(trees["after"], "--child", "timing", *flags)
        rounds["after_gpu"].append(t["gpu_form"])
        rounds["after_cpu"].append(t["cpu_default"])
    med = {k: statistics.median(v) for k, v in rounds.items()}
    result["timing"] = {"rounds": args.rounds, "before_ms": med["before"], "after_gpu_form_ms": med["after_gpu"],
                        "after_cpu_default_ms": med["after_cpu"], "ratio_gpu_form": med["after_gpu"] / med["before"],
                        "ratio_cpu_default": med["after_cpu"] / med["before"], "all": rounds}
    commit = subprocess.run(["git", "-C", trees["before"], "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result["before_commit"] = commit or "?"
    result["after_commit"] = subprocess.run(["git", "-C", trees["after"], "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip() or "?"
    from lightning_ssl_backdoor.data.artifacts import write_result_pair

    write_result_pair(args.output, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
