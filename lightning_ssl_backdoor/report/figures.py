"""Report figures (matplotlib, Agg): CA/ASR bars per row, CA and ASR over training steps,
per-target ASR, a grid of clean vs triggered vs poisoned examples, and (for rows of Carlini's
training-dynamics defense) the influence histogram of poisons vs clean images (Fig. 7). Each figure is written as a
PNG (``DPI`` dots per inch) and as a PDF beside it (vector, for papers); every file atomically
(temporary file, then rename) with the usual permissions (0666 less the umask)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_ssl_backdoor.data.artifacts import atomic_write, load_arrays  # noqa: E402
from lightning_ssl_backdoor.errors import ArtifactError  # noqa: E402
from lightning_ssl_backdoor.metrics import auroc as metric_auroc  # noqa: E402
from lightning_ssl_backdoor.report.summary import summarize  # noqa: E402

DPI = 200


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as ``path`` (PNG at ``DPI``) and as the PDF beside it; return the PNG's path."""
    try:
        for target, fmt in ((path, "png"), (path.with_suffix(".pdf"), "pdf")):
            atomic_write(target, lambda fh, fmt=fmt: fig.savefig(fh, format=fmt, dpi=DPI, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def _label(s: dict[str, Any]) -> str:
    parts = [s["algorithm"], s["attack"] or "no attack"]
    if s["defense"]:
        parts.append(f"+ {s['defense']}")
    return "\n".join(parts)


def bars(rows: list[dict[str, Any]], path: Path) -> Path:
    summary = summarize(rows)
    n = len(summary)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * n + 2), 3.8))
    xs = range(n)
    w = 0.38
    ca = [s["clean_accuracy"] or 0 for s in summary]
    asr = [s["asr"] or 0 for s in summary]
    has_asr = [s["asr"] is not None for s in summary]  # no attack: no ASR bar, "n/a" above it
    ax.bar([x - w / 2 for x in xs], ca, w, yerr=[s["clean_accuracy_std"] or 0 for s in summary], label="clean accuracy", color="#4C72B0")
    ax.bar([x + w / 2 for x in xs], asr, w, yerr=[s["asr_std"] or 0 for s in summary], label="attack success rate", color="#C44E52")
    for x, a, b, h in zip(xs, ca, asr, has_asr):
        ax.text(x - w / 2, a + 1, f"{a:.1f}", ha="center", fontsize=8)
        ax.text(x + w / 2, b + 1, f"{b:.1f}" if h else "n/a", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [_label(s) for s in summary], fontsize=8)
    ax.set_ylim(0, 122)  # headroom: the legend sits above the tallest bar labels
    ax.set_ylabel("%")
    ax.set_title("Clean accuracy and attack success rate per row (mean ± std over seeds)")
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    return save_figure(fig, path)


def curves(rows: list[dict[str, Any]], path: Path) -> Optional[Path]:
    """CA and ASR over training steps, and (where an attack has triggered poisons) the hijack share:
    triggered poisons pseudo-labelled as the target above the mask threshold (step 0 included)."""
    rows = [r for r in rows if r.get("history")]
    if not rows:
        return None
    hijack = any("backdoor/hijack" in p for r in rows for p in r["history"])
    fig, axes = plt.subplots(1, 3 if hijack else 2, figsize=(16 if hijack else 11, 3.8))
    for r in rows:
        h = r["history"]
        suffix = "_ema" if r.get("evaluated_weights") == "ema" else ""
        steps = [p["step"] for p in h]
        lab = f"{r['algorithm']} / {r['attack'] or 'no attack'}{' / ' + r['defense'] if r['defense'] else ''} / s{r['seed']}"
        axes[0].plot(steps, [100 * p.get("acc" + suffix, float("nan")) for p in h], marker=".", label=lab)
        if any(("asr" + suffix) in p for p in h):
            axes[1].plot(steps, [100 * p.get("asr" + suffix, float("nan")) for p in h], marker=".", label=lab)
        if hijack and any("backdoor/hijack" in p for p in h):
            start = next((p["backdoor/hijack_step0"] for p in h if "backdoor/hijack_step0" in p), None)
            xs = ([0] if start is not None else []) + steps
            ys = ([start] if start is not None else []) + [p.get("backdoor/hijack", float("nan")) for p in h]
            axes[2].plot(xs, [100 * y for y in ys], marker=".", label=lab)
    axes[0].set_title("Clean accuracy over training steps")
    axes[1].set_title("Attack success rate over training steps")
    if hijack:
        axes[2].set_title("Triggered poisons hijacked (target, above tau)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("%")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def per_target(rows: list[dict[str, Any]], path: Path) -> Optional[Path]:
    targets = {r.get("target") for r in rows if r.get("asr") is not None}
    if len(targets) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    groups: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        if r.get("asr") is None:
            continue
        groups.setdefault(f"{r['algorithm']} / {r['attack']}", {}).setdefault(int(r["target"]), []).append(r["asr"])
    for name, by_t in groups.items():
        ts = sorted(by_t)
        ax.plot(ts, [sum(by_t[t]) / len(by_t[t]) for t in ts], marker="o", label=name)
    ax.set_xlabel("target class")
    ax.set_ylabel("ASR (%)")
    ax.set_title("Attack success rate per target class")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def example_grid(split: Any, path: Path, n: int = 8) -> Optional[Path]:
    """Clean test images, the same images with the trigger, and poisoned unlabeled images."""
    trigger = getattr(split, "trigger", None)
    mask = getattr(split, "unlabeled_poison_mask", None)
    if trigger is None and (mask is None or not mask.any()):
        return None
    rows = []
    names = []
    clean = split.test.images[:n].float() / 255
    rows.append(clean)
    names.append("clean test")
    if trigger is not None:
        with torch.no_grad():
            rows.append(trigger(clean).clamp(0, 1))
        names.append("triggered test")
    if mask is not None and mask.any():
        idx = torch.nonzero(mask).flatten()
        kind = (getattr(split, "attack", None) or {}).get("arrays", {}).get("kind")
        if kind is not None and len(kind) == len(idx) and int(kind.max()) > int(kind.min()):
            # DeNeB-style pairs: half weakly perturbed (no trigger), half strongly perturbed + trigger
            order = torch.argsort(torch.as_tensor(kind), descending=True, stable=True)
            idx = torch.cat([idx[order[: n - n // 2]], idx[order.flip(0)[: n // 2]]])
            names.append(f"poisoned unlabeled ({n - n // 2} strong + trigger, {n // 2} weak)")
        else:
            idx = idx[:n]
            names.append("poisoned unlabeled")
        rows.append(split.unlabeled.images[idx].float() / 255)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows)), squeeze=False)
    for i, (imgs, name) in enumerate(zip(rows, names)):
        for j in range(n):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(imgs):
                im = imgs[j].permute(1, 2, 0).numpy()
                ax.imshow(im.squeeze(-1) if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None,
                          vmin=0, vmax=1, interpolation="nearest")
        axes[i][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(f"Examples: {split.attack.get('name', 'attack') if hasattr(split, 'attack') else 'attack'}, target {getattr(split, 'target', None)}", fontsize=9)
    return save_figure(fig, path)


def influence_histogram(rows: list[dict[str, Any]], path: Path, bins: int = 50) -> Optional[Path]:
    """Carlini Fig. 7 over every row whose defense kept influence scores (``defense_info
    ["scores_file"]``, :mod:`lightning_ssl_backdoor.defenses.influence_defense`): the average
    influence of the 5 nearest neighbours of poisoned vs clean unlabeled images, pooled over the
    rows (trials), log x axis, each group as a share of its own count (the poisons are ~1% of the
    images), with the pooled AUROC in the title. Rows whose file is gone (results merged from
    another machine) are skipped; ``None`` when no row has scores."""
    clean, poison, used = [], [], 0
    for r in rows:
        f = (r.get("defense_info") or {}).get("scores_file")
        if not f or not Path(f).is_file():
            continue
        try:
            arrays, _ = load_arrays(f)
        except ArtifactError:
            continue
        s = np.asarray(arrays["influence"], dtype=np.float64).reshape(-1)
        m = np.asarray(arrays["poison"]).astype(bool).reshape(-1)
        clean.append(s[~m])
        poison.append(s[m])
        used += 1
    if not used:
        return None
    c, p = np.concatenate(clean), np.concatenate(poison)
    auroc = ""
    if c.size and p.size:  # low influence = suspicious: the detector's score is the negated influence
        scores = -torch.from_numpy(np.concatenate([c, p]))
        auroc = f", AUROC {metric_auroc(scores, torch.arange(c.size + p.size) >= c.size):.3f}"
    both = np.concatenate([c, p])
    floor = both[both > 0].min() if (both > 0).any() else 1e-12
    c, p = np.maximum(c, floor), np.maximum(p, floor)
    lo, hi = float(min(c.min(initial=np.inf), p.min(initial=np.inf))), float(max(c.max(initial=0), p.max(initial=0)))
    edges = np.logspace(np.log10(lo), np.log10(hi if hi > lo else lo * 10), bins + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for vals, name, color in ((c, "clean", "#4C72B0"), (p, "poisoned", "#C44E52")):
        if vals.size:
            ax.hist(vals, bins=edges, weights=np.full(vals.size, 100.0 / vals.size), color=color, alpha=0.65,
                    label=f"{name} (n={vals.size})")
    ax.set_xscale("log")
    ax.set_xlabel("average influence of the 5 nearest neighbours (low = suspicious)")
    ax.set_ylabel("% of the group")
    ax.set_title(f"Influence of poisoned vs clean unlabeled images ({used} run{'s' if used > 1 else ''}{auroc})",
                 fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_figures(rows: list[dict[str, Any]], output: Path) -> list[Path]:
    out = [bars(rows, output / "ca_asr_bars.png"), curves(rows, output / "curves.png"),
           per_target(rows, output / "asr_per_target.png"), influence_histogram(rows, output / "influence_hist.png")]
    out += sorted(output.glob("examples_*.png"))
    return [p for p in out if p is not None]
