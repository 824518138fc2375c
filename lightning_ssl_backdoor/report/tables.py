"""Paper-style tables: results.json (every number with its provenance), results.md, results.csv and
results.tex (a booktabs table for a paper). In every table the ``seeds`` column lists the seeds a
row's mean ± std is taken over (e.g. ``0 1 2``)."""

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
from lightning_ssl_backdoor.report.diagnostics import diagnostics_markdown
from lightning_ssl_backdoor.report.figures import write_figures
from lightning_ssl_backdoor.report.summary import METRICS, summarize

__all__ = ["HEADERS", "METRICS", "markdown_table", "summarize", "write_report"]

HEADERS = {"clean_accuracy": "CA (%)", "asr": "ASR (%)", "asr_conditioned": "ASR cond. (%)"}


def _fmt(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def seeds_cell(seeds: list[int]) -> str:
    """The ``seeds`` column of every table: the seeds run, space-separated."""
    return " ".join(str(s) for s in seeds)


def markdown_table(summary: list[dict[str, Any]]) -> str:
    head = ["algorithm", "attack", "defense", "seeds"] + [HEADERS[m] for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        n = len(s["seeds"])
        cells = [s["algorithm"], s["attack"] or "none", s["defense"] or "none", seeds_cell(s["seeds"])]
        cells += [_fmt(s[m], s[m + "_std"], n) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(c, c) for c in str(text))


def latex_table(summary: list[dict[str, Any]], caption: str = "", label: str = "tab:results") -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``): mean $\\pm$ std over the seeds."""
    head = ["Algorithm", "Attack", "Defense", "Seeds", "CA (\\%)", "ASR (\\%)", "ASR cond. (\\%)"]
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(r"\caption{" + tex_escape(caption) + "}")
    lines += [r"\label{" + label + "}", r"\begin{tabular}{llll" + "r" * len(METRICS) + "}", r"\toprule",
              " & ".join(head) + r" \\", r"\midrule"]
    for s in summary:
        n = len(s["seeds"])
        cells = [tex_escape(x) for x in (s["algorithm"], s["attack"] or "none", s["defense"] or "none",
                                         seeds_cell(s["seeds"]))]
        for m in METRICS:
            mean, std = s[m], s[m + "_std"]
            cells.append("--" if mean is None else f"{mean:.2f}" if n == 1 else f"{mean:.2f} $\\pm$ {std:.2f}")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict[str, Any]], cfg: Any, output: Path, elapsed: float, version: str) -> dict[str, Any]:
    """Write results.json / results.md / results.csv / results.tex (and figures, PNG and PDF) into
    ``output``; return paths."""
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
    md += diagnostics_markdown(rows)
    figures = write_figures(rows, output)
    if figures:
        md += ["", "## Figures", "", "Each figure is also saved as PDF beside its PNG.", ""]
        md += [f"![{p.stem}]({p.name})" for p in figures]
    atomic_write_text(output / "results.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    cols = ["algorithm", "attack", "defense", "seeds"] + [c for m in METRICS for c in (m, m + "_std")]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for s in summary:
        w.writerow({**s, "seeds": seeds_cell(s["seeds"])})
    atomic_write_text(output / "results.csv", buf.getvalue())
    caption = (f"{getattr(cfg, 'name', 'experiment')}: clean accuracy (CA) and attack success rate (ASR), "
               "mean and std over the seeds listed.")
    atomic_write_text(output / "results.tex", latex_table(summary, caption))
    return {"table": table, "md": output / "results.md", "json": output / "results.json",
            "tex": output / "results.tex", "figures": figures}
