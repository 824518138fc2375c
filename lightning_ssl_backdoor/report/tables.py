"""Paper-style tables: results.json (every number with its provenance), results.md and results.csv."""

from __future__ import annotations

import csv
import io
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_ssl_backdoor.data.artifacts import atomic_write_json, atomic_write_text
from lightning_ssl_backdoor.report.figures import write_figures
from lightning_ssl_backdoor.report.summary import METRICS, summarize

__all__ = ["HEADERS", "METRICS", "markdown_table", "summarize", "write_report"]

HEADERS = {"clean_accuracy": "CA (%)", "asr": "ASR (%)", "asr_conditioned": "ASR cond. (%)"}


def _fmt(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def markdown_table(summary: list[dict[str, Any]]) -> str:
    head = ["algorithm", "attack", "defense", "seeds"] + [HEADERS[m] for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        n = len(s["seeds"])
        cells = [s["algorithm"], s["attack"] or "none", s["defense"] or "none", str(n)]
        cells += [_fmt(s[m], s[m + "_std"], n) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(rows: list[dict[str, Any]], cfg: Any, output: Path, elapsed: float, version: str) -> dict[str, Any]:
    """Write results.json / results.md / results.csv (and figures) into ``output``; return paths."""
    output.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    table = markdown_table(summary)
    meta = {
        "package_version": version,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_seconds": round(elapsed, 1),
        "config": asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else cfg,
    }
    atomic_write_json(output / "results.json", {"rows": rows, "summary": summary, **meta})
    md = [f"# {getattr(cfg, 'name', 'experiment')}", "", table, "",
          "CA: clean accuracy on every test image. ASR: triggered non-target test images predicted as the",
          "target. ASR cond.: the same among images whose clean prediction is correct (Yan et al., Eq. 6).",
          "EMA weights are reported where the algorithm keeps them; the last model, never one selected on",
          "the test set.", "", f"package {version}, torch {torch.__version__}, {meta['created']}, "
          f"{meta['elapsed_seconds']} s"]
    figures = write_figures(rows, output)
    if figures:
        md += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    atomic_write_text(output / "results.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    cols = ["algorithm", "attack", "defense", "seeds"] + [c for m in METRICS for c in (m, m + "_std")]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for s in summary:
        w.writerow({**s, "seeds": " ".join(map(str, s["seeds"]))})
    atomic_write_text(output / "results.csv", buf.getvalue())
    return {"table": table, "md": output / "results.md", "json": output / "results.json", "figures": figures}
