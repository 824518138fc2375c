"""``--only`` runs add to an existing ``results.json`` instead of replacing it.

Rows are identified by (algorithm, attack, defense, seed) labels. The rows of an existing
``results.json`` are kept when that file was written for the same experiment (its recorded config
equals this run's, ignoring where and how fast it runs: ``output``, ``jobs``, ``threads``) and the
row is still part of the grid; a row run now replaces the old row with the same labels. Rows come
out in grid order. A ``results.json`` of a different config is replaced, with a warning.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

IGNORED = ("output", "jobs", "threads")


def row_key(row: dict[str, Any]) -> tuple:
    return (row.get("algorithm"), row.get("attack"), row.get("defense"), row.get("seed"))


def _comparable(config: Any) -> dict:
    d = asdict(config) if hasattr(config, "__dataclass_fields__") else dict(config or {})
    return json.loads(json.dumps({k: v for k, v in d.items() if k not in IGNORED}, sort_keys=True, default=str))


def merge_rows(output: Path, cfg: Any, grid_keys: list[tuple], new_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows to write: ``new_rows`` plus the still-valid rows of ``output/results.json``."""
    path = Path(output) / "results.json"
    old: list[dict[str, Any]] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            same = _comparable(previous.get("config")) == _comparable(cfg)
            old = list(previous.get("rows", [])) if same else []
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            warnings.warn(f"{path} was written for a different config; its rows are replaced.", stacklevel=2)
    by_key: dict[tuple, dict[str, Any]] = {row_key(r): r for r in old if row_key(r) in grid_keys}
    by_key.update({row_key(r): r for r in new_rows})
    order: dict[tuple, int] = {}
    for i, k in enumerate(grid_keys):
        order.setdefault(k, i)
    return sorted(by_key.values(), key=lambda r: order.get(row_key(r), len(order)))


def grid_keys(rows: list[tuple]) -> list[tuple]:
    """The labels of the runner's rows ``(algorithm, attack, defense, seed)`` Specs."""
    def label(spec: Optional[Any]) -> Optional[str]:
        return None if spec is None else spec.display

    return [(label(a), label(t), label(d), s) for a, t, d, s in rows]
