"""The report of an experiment: results.json (every number with its provenance), results.md,
results.csv, results.tex (:mod:`~lightning_ssl_backdoor.report.latex`) and the figures.

:func:`write_report` writes ``results.json`` and then everything else from it through
:func:`render_report`, which is all ``ssl-backdoor report render DIR`` runs: the tables and figures
depend only on the JSON (and the display names and class count the caller passes), so a report
redrawn from a results.json, or merged from shards, is the one the run wrote.

The Markdown table and the CSV hold the same cells: attack / defense ``none`` where a row has none,
the ``seeds`` a row ran (``0 1 2``) and their number ``n``; the Markdown's "mean ± std" is the CSV's
two columns (std empty for one seed; "–" in the Markdown, an empty cell in the CSV, where a row has
no such number).
"""

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
from lightning_ssl_backdoor.report.latex import latex_table, tex_escape, tex_label
from lightning_ssl_backdoor.report.style import Names
from lightning_ssl_backdoor.report.summary import METRICS, summarize

__all__ = ["CSV_COLUMNS", "HEADERS", "METRICS", "build_results", "csv_table", "latex_table", "markdown_table",
           "render_report", "summarize", "tex_escape", "tex_label", "write_report"]

HEADERS = {"clean_accuracy": "CA (%)", "asr": "ASR (%)", "asr_conditioned": "ASR cond. (%)"}


def _fmt(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if n == 1 or std is None else f"{mean:.2f} ± {std:.2f}"


def seeds_cell(seeds: list[int]) -> str:
    """The ``seeds`` column of every table: the seeds run, space-separated."""
    return " ".join(str(s) for s in seeds)


def _names(s: dict[str, Any]) -> list[str]:
    return [s["algorithm"], s["attack"] or "none", s["defense"] or "none", seeds_cell(s["seeds"]), str(len(s["seeds"]))]


def markdown_table(summary: list[dict[str, Any]]) -> str:
    head = ["algorithm", "attack", "defense", "seeds", "n"] + [HEADERS[m] for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        n = len(s["seeds"])
        cells = _names(s) + [_fmt(s[m], s[m + "_std"], n) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_COLUMNS = ["algorithm", "attack", "defense", "seeds", "n"] + [c for m in METRICS for c in (m, m + "_std")]


def csv_table(summary: list[dict[str, Any]]) -> str:
    """The Markdown table's cells, each number and its std in two columns."""
    def num(v: Optional[float]) -> str:
        return "" if v is None else f"{v:.2f}"

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in summary:
        n = len(s["seeds"])
        w.writerow(_names(s) + [x for m in METRICS for x in (num(s[m]), num(s[m + "_std"]) if n > 1 else "")])
    return buf.getvalue()


def build_results(rows: list[dict[str, Any]], cfg: Any, elapsed: float, version: str) -> dict[str, Any]:
    """The content of results.json: the rows, their summary over seeds and the run's provenance."""
    return {
        "rows": rows,
        "summary": summarize(rows),
        "package_version": version,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_seconds": round(elapsed, 1),
        "config": asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else cfg,
    }


def render_report(results: dict[str, Any], output: Path, names: Optional[Names] = None,
                  num_classes: Optional[int] = None) -> dict[str, Any]:
    """results.md, results.csv, results.tex and the figures of ``results`` (a results.json's
    content) in ``output``; the summary is recomputed from the rows. Returns the paths."""
    output.mkdir(parents=True, exist_ok=True)
    rows = results["rows"]
    summary = summarize(rows)
    table = markdown_table(summary)
    name = (results.get("config") or {}).get("name") or "experiment"
    md = [f"# {name}", "", table, "",
          "CA: clean accuracy on every test image. ASR: triggered non-target test images predicted as the",
          "target. ASR cond.: the same among images whose clean prediction is correct (Yan et al., Eq. 6).",
          "Mean ± std over the row's n seeds (the value alone for one seed).",
          "EMA weights are reported where the algorithm keeps them; the last model, never one selected on",
          "the test set.", "", f"package {results.get('package_version')}, torch {results.get('torch_version')}, "
          f"{results.get('created')}, {results.get('elapsed_seconds')} s"]
    md += diagnostics_markdown(rows)
    figures = write_figures(rows, output, names, num_classes)
    if figures:
        md += ["", "## Figures", "",
               "Each figure is also saved as a vector PDF beside its PNG; `*_1col.pdf` are one-column (3.3 in) versions.", ""]
        md += [f"![{p.stem}]({p.name})" for p in figures]
    atomic_write_text(output / "results.md", "\n".join(md) + "\n")
    atomic_write_text(output / "results.csv", csv_table(summary))
    atomic_write_text(output / "results.tex", latex_table(summary, name, names))
    return {"table": table, "md": output / "results.md", "json": output / "results.json",
            "csv": output / "results.csv", "tex": output / "results.tex", "figures": figures}


def write_report(rows: list[dict[str, Any]], cfg: Any, output: Path, elapsed: float, version: str,
                 names: Optional[Names] = None, num_classes: Optional[int] = None) -> dict[str, Any]:
    """Write results.json, then the tables and figures drawn from it (:func:`render_report`)."""
    output.mkdir(parents=True, exist_ok=True)
    results = build_results(rows, cfg, elapsed, version)
    atomic_write_json(output / "results.json", results)
    return render_report(results, output, names, num_classes)
