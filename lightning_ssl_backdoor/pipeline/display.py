"""What a report needs from an experiment's config beyond its rows: the display names of its
algorithms, attacks and defenses (from the components' registries) and its number of classes.

A row carries a component's label (``Spec.display``: the config's ``label``, or the registered
name). Its display name is the registry's (``DISPLAY_NAMES`` beside ``ALGORITHMS``, ``ATTACKS`` and
``DEFENSES``) when the label is the name; a label that starts with the name, or with the
registry's display name (``dbd-per-class`` for ``dbd``, ``bi-test-filter`` for ``invalidator``
shown as ``BI``), becomes that display name with the rest in parentheses (``DBD (per class)``,
``BI (test filter)``); any other label is shown as written, its hyphens and underscores as
spaces and its first letter in upper case.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from lightning_ssl_backdoor.attacks.registry import display_name as attack_display
from lightning_ssl_backdoor.defenses.base import display_name as defense_display
from lightning_ssl_backdoor.pipeline.build import component_spec
from lightning_ssl_backdoor.report.style import Names
from lightning_ssl_backdoor.report.tables import write_report
from lightning_ssl_backdoor.ssl import display_name as algorithm_display

__all__ = ["config_names", "display_label", "num_classes", "write_experiment_report"]

REGISTRY_NAMES: dict[str, Callable[[str], str]] = {
    "algorithm": algorithm_display, "attack": attack_display, "defense": defense_display}
# data sets whose class count is known without reading them (a subset's ``classes`` wins)
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "mnist": 10, "svhn": 10, "stl10": 10, "cifar100": 100}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def display_label(kind: str, name: str, label: Optional[str] = None) -> str:
    """The display name of a component registered as ``name`` and labelled ``label``."""
    base = REGISTRY_NAMES[kind](name)
    if not label or label == name:
        return base
    lab = _norm(label)
    for prefix in dict.fromkeys((_norm(name), _norm(base))):
        if prefix and lab == prefix:
            return base
        if prefix and lab.startswith(prefix + "-"):
            return f"{base} ({lab[len(prefix) + 1:].replace('-', ' ')})"
    text = label.replace("-", " ").replace("_", " ")
    return text[:1].upper() + text[1:]


def config_names(config: Any) -> Names:
    """The display names of every component of ``config`` (an ExperimentConfig or its dict)."""
    d = asdict(config) if hasattr(config, "__dataclass_fields__") else dict(config or {})
    table: dict[str, dict[str, str]] = {}
    for kind, key in (("algorithm", "algorithms"), ("attack", "attacks"), ("defense", "defenses")):
        for entry in d.get(key) or []:
            if entry is None:
                continue
            spec = component_spec(entry)
            table.setdefault(kind, {})[spec.display] = display_label(kind, spec.name, spec.label)
    return Names(table)


def num_classes(config: Any) -> Optional[int]:
    """The number of classes the experiment's rows classify (None when the config does not say)."""
    d = asdict(config) if hasattr(config, "__dataclass_fields__") else dict(config or {})
    data = d.get("data") or {}
    classes = (data.get("subset") or {}).get("classes")
    if classes:
        return len(classes)
    return DATASET_CLASSES.get(str(data.get("dataset", "")).lower())


def write_experiment_report(rows: list[dict[str, Any]], cfg: Any, output: Path, elapsed: float,
                            version: str) -> dict[str, Any]:
    """:func:`~lightning_ssl_backdoor.report.tables.write_report` with the config's display names
    and class count."""
    return write_report(rows, cfg, output, elapsed=elapsed, version=version, names=config_names(cfg),
                        num_classes=num_classes(cfg))
