"""``ssl-backdoor report merge DIR... --output DIR``: one report from the shards of a grid;
``ssl-backdoor report render DIR [--output DIR]``: every table and figure redrawn from a results.json.

A grid split over jobs with ``--only`` (one SLURM array task per slice of rows, say) leaves one
report folder per shard. The merge reads each shard's ``results.json``, checks that every shard ran
the same experiment config, puts the rows back in the grid's order (the order a single
``ssl-backdoor experiment`` run writes them in), and writes the report (tables, figures) exactly as
the whole grid's run would; the attack example grids are copied from the shards.

``render`` reads one ``results.json`` (DIR, or a .json file such as the committed
``benchmarks/results/experiments/<name>.json``) and writes results.md / .csv / .tex and every
figure from it, without training: the tables and figures of a report depend on nothing else. The
JSON itself is left as it is. A shard or results file that cannot be read as a report (not JSON,
not an object with a ``rows`` list and a ``config``, a row without its labels) is refused with one
sentence (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from lightning_ssl_backdoor import __version__
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.build import config_from_dict
from lightning_ssl_backdoor.pipeline.display import config_names, num_classes, write_experiment_report
from lightning_ssl_backdoor.report.tables import render_report

# config fields that say how a run was executed, not what it computed
RUN_ONLY_FIELDS = ("output", "jobs", "threads")


ROW_KEYS = ("algorithm", "attack", "defense", "seed")


def _load(folder: Path) -> dict[str, Any]:
    """The report in ``folder`` (or the .json file ``folder``), checked to be one."""
    path = folder if folder.suffix == ".json" and folder.is_file() else folder / "results.json"
    if not path.is_file():
        raise ConfigError(f"{folder} holds no results.json; give report folders written by `ssl-backdoor experiment`.")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not text (binary data); give the results.json an experiment wrote.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg}); re-run that shard.") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not isinstance(data.get("config"), dict):
        raise ConfigError(f"{path} is not an experiment report (a JSON object with 'rows' and 'config'); "
                          "give the results.json an experiment wrote.")
    for i, row in enumerate(data["rows"]):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ConfigError(f"{path}: row {i} lacks {', '.join(missing)}; the file is damaged, re-run that shard.")
    return data


def _fill(kept: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``kept`` with the fields it lacks (absent, None or empty) taken from ``other``."""
    out = dict(kept)
    for k, v in other.items():
        if out.get(k) in (None, {}, []) and v not in (None, {}, []):
            out[k] = v
    return out


def _row_key(row: dict[str, Any]) -> tuple:
    return row["algorithm"], row["attack"], row["defense"], row["seed"]


def grid_order(config: dict[str, Any]) -> list[tuple]:
    """The keys (algorithm, attack, defense, seed) of the grid's rows, in the order of a full run."""
    from lightning_ssl_backdoor.pipeline.experiment import Runner  # the runner only for merging

    runner = Runner(config_from_dict(config), Path("."), progress=False)  # only its row list is used
    return [
        (a.display, None if t is None else t.display, None if d is None else d.display, s)
        for a, t, d, s in runner.rows()
    ]


def merge_shards(folders: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any], float, list[tuple]]:
    """The merged rows (grid order), the shards' common config, their summed elapsed seconds and the
    keys of the grid's rows that no shard holds."""
    if not folders:
        raise ConfigError("report merge needs at least one shard folder.")
    shards = [_load(Path(f)) for f in folders]
    common = {k: v for k, v in shards[0]["config"].items() if k not in RUN_ONLY_FIELDS}
    for folder, shard in zip(folders[1:], shards[1:]):
        other = {k: v for k, v in shard["config"].items() if k not in RUN_ONLY_FIELDS}
        if other != common:
            diff = sorted(k for k in set(common) | set(other) if common.get(k) != other.get(k))
            raise ConfigError(f"{folder} ran another config than {folders[0]} (differs in {diff}); "
                              "merge only shards of one experiment.")
    order = grid_order(shards[0]["config"])
    position = {key: i for i, key in enumerate(order)}
    by_key: dict[tuple, dict[str, Any]] = {}
    for folder, shard in zip(folders, shards):
        for row in shard["rows"]:
            key = _row_key(row)
            if key not in position:
                raise ConfigError(f"{folder}: row {key} is not in the grid of its config; the shard is corrupt.")
            # a row in two shards (same cache key, same numbers): what one lacks, the other fills in
            # (a shard that kept an older copy of the no-attack row, without its base rates, say)
            by_key[key] = _fill(by_key[key], row) if key in by_key else row
    rows = [by_key[k] for k in sorted(by_key, key=position.__getitem__)]
    missing = [k for k in order if k not in by_key]
    elapsed = sum(float(s.get("elapsed_seconds") or 0.0) for s in shards)
    return rows, shards[0]["config"], elapsed, missing


def merge_main(folders: list[str], output: str) -> dict[str, Any]:
    dirs = [Path(f) for f in folders]
    rows, config, elapsed, missing = merge_shards(dirs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for d in dirs:  # the attack example grids are drawn by the shard that ran the attack
        for pattern in ("examples_*.png", "examples_*.pdf"):
            for fig in d.glob(pattern):
                if not (out / fig.name).exists() and d.resolve() != out.resolve():
                    shutil.copyfile(fig, out / fig.name)
    cfg = config_from_dict(config)
    paths = write_experiment_report(rows, cfg, out, elapsed=elapsed, version=__version__)
    print(paths["table"])
    if missing:
        print(f"\n{len(missing)} of {len(rows) + len(missing)} grid rows are in no shard yet: "
              + "; ".join(" / ".join(str(x) for x in k) for k in missing[:5]) + (" ..." if len(missing) > 5 else ""))
    print(f"\nreport: {paths['md']}  (merged from {len(dirs)} shards)")
    return paths


def render_main(folder: str, output: Optional[str] = None) -> dict[str, Any]:
    """Redraw the tables and figures of the report in ``folder`` (see the module docstring)."""
    src = Path(folder)
    results = _load(src)
    out = Path(output) if output else (src.parent if src.suffix == ".json" else src)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder for the report.")
    config = results["config"]
    paths = render_report(results, out, names=config_names(config), num_classes=num_classes(config))
    print(paths["table"])
    print(f"\nreport: {paths['md']}  ({len(paths['figures'])} figures redrawn from {src})")
    return paths


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ssl-backdoor report", description="Work with experiment reports.")
    sub = parser.add_subparsers(dest="action", required=True)
    m = sub.add_parser("merge", help="merge the report folders of --only shards into one report",
                       description="Merge the results.json of shards of one grid (run with --only) into "
                                   "the report a single run of the whole grid writes.")
    m.add_argument("folders", nargs="+", metavar="DIR", help="report folders of the shards")
    m.add_argument("--output", required=True, metavar="DIR", help="folder of the merged report")
    r = sub.add_parser("render", help="redraw every table and figure of a report from its results.json",
                       description="Write results.md, results.csv, results.tex and every figure from a "
                                   "results.json, without training.")
    r.add_argument("folder", metavar="DIR", help="a report folder (or a results .json file)")
    r.add_argument("--output", default=None, metavar="DIR", help="where to write (default: DIR)")
    ns: Optional[argparse.Namespace] = parser.parse_args(argv)
    if ns.action == "render":
        render_main(ns.folder, ns.output)
    else:
        merge_main(ns.folders, ns.output)
    return 0
