"""Save and load a :class:`PoisonedSplit` as a safe artifact (``.npz`` + JSON manifest).

Artifact I/O is data: ``data/`` reads what ``attacks/`` writes, so this lives here and
``lightning_ssl_backdoor.attacks.io`` re-exports it (``data/`` never imports ``attacks/``).

Everything travels: the labeled, unlabeled and test images with their labels and true labels,
source indices, poison masks, the trigger's pattern arrays and manifest, the attack's config and
per-poison metadata arrays, the target and the seed. Arrays are stored with ``save_arrays`` (no
pickles; a sha256 per array) and loaded with ``allow_pickle=False``.

Tamper evidence: the manifest (inside the archive) records a sha256 of its own content (meta + the
per-array hash table) and of every archive byte before it, and its text must equal its canonical
JSON form; so changing any byte of the archive or of the manifest raises ``ArtifactError``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from lightning_ssl_backdoor.data.artifacts import (
    _json_default,
    load_arrays,
    read_manifest,
    save_arrays,
    sha256_array,
)
from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.label_range import check_split_labels
from lightning_ssl_backdoor.data.split import PoisonedSplit
from lightning_ssl_backdoor.errors import ArtifactError, ConfigError, malformed
from lightning_ssl_backdoor.triggers import trigger_from_manifest

FORMAT = "lightning_ssl_backdoor.poisoned_split"
VERSION = 1
_SETS = ("labeled", "unlabeled", "test")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _content_hash(meta: Dict[str, Any], table: Dict[str, Any]) -> str:
    blob = json.dumps({"meta": meta, "arrays": table}, sort_keys=True, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_poisoned_split(path: str | Path, split: PoisonedSplit) -> Path:
    """Write ``split`` to ``path`` (``.npz``) and ``path`` with ``.json`` (manifest), atomically."""
    if not isinstance(split, PoisonedSplit):
        raise ConfigError(f"save_poisoned_split takes a PoisonedSplit, got {type(split).__name__}.")
    arrays: Dict[str, np.ndarray] = {}
    has_true: Dict[str, bool] = {}
    for name in _SETS:
        s: ImageSet = getattr(split, name)
        arrays[f"{name}.images"] = _np(s.images)
        arrays[f"{name}.labels"] = _np(s.labels)
        has_true[name] = s.true_labels is not None
        if s.true_labels is not None:
            arrays[f"{name}.true_labels"] = _np(s.true_labels)
    arrays["labeled.indices"] = _np(split.labeled_indices.to(torch.int64))
    arrays["unlabeled.indices"] = _np(split.unlabeled_indices.to(torch.int64))
    arrays["labeled.poison_mask"] = _np(split.labeled_poison_mask)
    arrays["unlabeled.poison_mask"] = _np(split.unlabeled_poison_mask)
    trigger_manifest = None
    if split.trigger is not None:
        if not hasattr(split.trigger, "manifest"):
            raise ConfigError("the split's trigger cannot describe itself; use a lightning_ssl_backdoor Trigger.")
        trigger_manifest = split.trigger.manifest()
        for k, v in split.trigger.arrays().items():
            arrays[f"trigger.{k}"] = _np(v)
    attack = dict(split.attack or {})
    attack_arrays = attack.pop("arrays", {}) or {}
    for k, v in attack_arrays.items():
        arrays[f"attack.{k}"] = _np(torch.as_tensor(v))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "classes": {name: list(getattr(split, name).classes) for name in _SETS},
        "has_true_labels": has_true,
        "seed": int(split.seed),
        "target": None if split.target is None else int(split.target),
        "trigger": trigger_manifest,
        "attack": json.loads(json.dumps(attack, sort_keys=True, default=_json_default)),
        "attack_arrays": sorted(attack_arrays),
    }
    table = {k: {"sha256": sha256_array(a), "dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays.items()}
    meta["content_sha256"] = _content_hash(meta, table)
    return save_arrays(path, arrays, meta)


def _verify(path: Path) -> Dict[str, Any]:
    manifest = read_manifest(path)  # the manifest inside the archive, checked against its bytes
    meta = manifest.get("meta", {})
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a PoisonedSplit artifact (format {meta.get('format')!r}).")
    claimed = meta.get("content_sha256")
    rest = {k: v for k, v in meta.items() if k != "content_sha256"}
    if claimed != _content_hash(rest, manifest.get("arrays", {})):
        raise ArtifactError(f"the manifest of {path} does not match its content hash; it was modified after saving.")
    return meta


def load_poisoned_split(path: str | Path) -> PoisonedSplit:
    """Load and verify an artifact written by :func:`save_poisoned_split`."""
    path = Path(path)
    _verify(path)
    arrays, meta = load_arrays(path)
    with malformed(path, "PoisonedSplit artifact"):
        split = _build(arrays, meta)
    check_split_labels(split, path)  # a label outside the class list would score as wrong, silently
    return split


def _build(arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> PoisonedSplit:
    t = {k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in arrays.items()}

    def imageset(name: str) -> ImageSet:
        true = t.get(f"{name}.true_labels") if meta["has_true_labels"][name] else None
        return ImageSet(images=t[f"{name}.images"], labels=t[f"{name}.labels"],
                        classes=meta["classes"][name], true_labels=true)

    trigger = None
    if meta.get("trigger") is not None:
        trig_arrays = {k[len("trigger."):]: v for k, v in t.items() if k.startswith("trigger.")}
        trigger = trigger_from_manifest(meta["trigger"], trig_arrays)
    attack: Dict[str, Any] = dict(meta.get("attack") or {})
    if meta.get("attack_arrays"):
        attack["arrays"] = {k: t[f"attack.{k}"] for k in meta["attack_arrays"]}
    return PoisonedSplit(
        labeled=imageset("labeled"),
        unlabeled=imageset("unlabeled"),
        test=imageset("test"),
        labeled_indices=t["labeled.indices"],
        unlabeled_indices=t["unlabeled.indices"],
        seed=int(meta["seed"]),
        trigger=trigger,
        target=meta.get("target"),
        unlabeled_poison_mask=t["unlabeled.poison_mask"],
        labeled_poison_mask=t["labeled.poison_mask"],
        attack=attack,
    )


def artifact_meta(path: str | Path) -> Optional[Dict[str, Any]]:
    """The verified manifest meta of an artifact, or ``None`` if it is missing or invalid."""
    try:
        return _verify(Path(path))
    except ArtifactError:
        return None
