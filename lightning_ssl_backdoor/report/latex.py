r"""``results.tex``: the results table for a paper (booktabs; needs ``\usepackage{booktabs,graphicx}``).

- Rows are grouped by attack (a group heading per attack, the defenses under it), so the table has
  four columns (defense, CA, ASR, conditioned ASR) and fits one column of a two-column paper; it
  is set in ``\small`` and, should it still be wider than ``\linewidth``, scaled down to it (never
  up): the tabular is measured in a box first.
- Names are the display names of the components' registries (FixMatch, Clean-label, DBD (per
  class), ...: :class:`~lightning_ssl_backdoor.report.style.Names`); a part shared by every row
  (one algorithm) is said once, in the caption.
- The label is ``tab:<experiment name>`` (lower case, ``-`` for anything but letters and digits),
  so two reports' tables in one paper never clash.
- The caption gives the number of seeds and defines CA, ASR and conditioned ASR. A row of one seed
  shows its value alone: no ``$\pm$``; a row of several shows mean $\pm$ std.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from lightning_ssl_backdoor.report.style import Names

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
METRICS = ("clean_accuracy", "asr", "asr_conditioned")


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(c, c) for c in str(text))


def tex_label(experiment: str) -> str:
    """``tab:`` and the experiment name in lower case, runs of other characters as one ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(experiment).lower()).strip("-")
    return "tab:" + (slug or "results")


def _cell(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "--"
    if n > 1 and std is not None:
        return f"{mean:.2f}{{\\scriptsize${{}}\\pm{{}}${std:.2f}}}"
    return f"{mean:.2f}"


def _seeds_text(summary: list[dict[str, Any]]) -> str:
    sets = {tuple(s["seeds"]) for s in summary}
    if len(sets) == 1:
        seeds = next(iter(sets))
        if len(seeds) == 1:
            return f"one seed ({seeds[0]}), so no standard deviation"
        return f"mean $\\pm$ standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
    ns = sorted({len(s) for s in sets})
    return (f"mean $\\pm$ standard deviation over each row's seeds ({'--'.join(map(str, (ns[0], ns[-1])))} "
            "per row; a row of one seed shows its value alone)")


def latex_table(summary: list[dict[str, Any]], experiment: str, names: Optional[Names] = None) -> str:
    names = names or Names()
    algorithms = list(dict.fromkeys(s["algorithm"] for s in summary))
    one_alg = len(algorithms) == 1
    caption = (f"Results of the \\texttt{{{tex_escape(experiment)}}} experiment"
               + (f" ({tex_escape(names('algorithm', algorithms[0]))})" if one_alg and algorithms else "")
               + f", {_seeds_text(summary)}. CA: clean accuracy on every test image (\\%). "
               "ASR: share of the triggered test images of non-target classes classified as the target (\\%). "
               "Conditioned ASR: the same among the images classified correctly without the trigger "
               "(Yan et al., Eq.~6); rows grouped by attack.")
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             r"\caption{" + caption + "}", r"\label{" + tex_label(experiment) + "}",
             r"\vspace{3pt}", r"\setbox0=\hbox{%", r"\begin{tabular}{lrrr}", r"\toprule",
             r"Defense & CA (\%) & ASR (\%) & Cond.\ ASR (\%) \\", r"\midrule"]
    first: dict[tuple, int] = {}
    for s in summary:
        first.setdefault((s["algorithm"], s["attack"]), len(first))
    group: Optional[tuple] = None
    for s in sorted(summary, key=lambda s: first[(s["algorithm"], s["attack"])]):
        g = (s["algorithm"], s["attack"])
        if g != group:
            if group is not None:
                lines.append(r"\addlinespace")
            head = names("attack", s["attack"]).capitalize() if s["attack"] is None else names("attack", s["attack"])
            if not one_alg:
                head = f"{names('algorithm', s['algorithm'])}, {head}"
            lines.append(r"\multicolumn{4}{@{}l}{\emph{" + tex_escape(head) + r"}} \\")
            group = g
        n = len(s["seeds"])
        defense = "none" if s["defense"] is None else names("defense", s["defense"])
        cells = [r"\quad " + tex_escape(defense)] + [_cell(s[m], s.get(m + "_std"), n) for m in METRICS]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}%",
              r"\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\box0}\else\box0\fi", r"\end{table}"]
    return "\n".join(lines) + "\n"
