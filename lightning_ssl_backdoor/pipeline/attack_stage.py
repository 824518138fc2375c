"""The attack stage of an experiment: surrogate (if the attack needs one) -> poisons -> artifact.

Both the surrogate and the PoisonedSplit are cached in their own stage folders; an attack's long
loops checkpoint their finished chunks in ``stage_dir/chunks`` so an interrupted stage resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_ssl_backdoor.attacks import build_attack_from_spec
from lightning_ssl_backdoor.data.poisoned_io import load_poisoned_split, save_poisoned_split
from lightning_ssl_backdoor.attacks.surrogate import load_surrogate, save_surrogate, train_surrogate
from lightning_ssl_backdoor.data import PoisonedSplit, SSLSplit
from lightning_ssl_backdoor.data.cache_entry import set_aside
from lightning_ssl_backdoor.errors import ArtifactError
from lightning_ssl_backdoor.spec import Spec


def run_attack_stage(
    split: SSLSplit,
    attack: Spec,
    surrogate: dict[str, Any],
    seed: int,
    stage_dir: Path,
    surrogate_dir: Path,
    progress: bool = True,
) -> PoisonedSplit:
    artifact = stage_dir / "poisoned.npz"
    if artifact.is_file() and artifact.with_suffix(".json").is_file():
        try:
            return load_poisoned_split(artifact)
        except ArtifactError as exc:  # a damaged cache entry: set aside (both files) and rebuilt
            set_aside(artifact.with_suffix(".json"), "its artifact is unusable")
            set_aside(artifact, str(exc))
    spec = {"name": attack.name, **attack.init_args}
    spec.setdefault("seed", seed)
    att = build_attack_from_spec(spec, progress=progress)
    model = None
    if att.needs_model:
        model = surrogate_model(split, surrogate, seed, surrogate_dir, progress)
    stage_dir.mkdir(parents=True, exist_ok=True)
    att.work_dir = str(stage_dir / "chunks")
    poisoned = att.poison(split, model)
    save_poisoned_split(artifact, poisoned)
    return load_poisoned_split(artifact)


def surrogate_model(split: SSLSplit, surrogate: dict[str, Any], seed: int, folder: Path, progress: bool = True):
    """The attacker's theta_0, trained on the labeled split only (Yan et al. Step 1), cached."""
    cfg = dict(surrogate)
    ckpt = cfg.pop("checkpoint", None)
    device = cfg.pop("device", None)
    if ckpt:
        return load_surrogate(ckpt, device=device)
    path = folder / "surrogate.safetensors"
    if path.is_file():
        try:
            return load_surrogate(path, device=device)
        except ArtifactError as exc:  # a damaged cache entry: set aside and retrained
            set_aside(path, str(exc))
    cfg.setdefault("seed", seed)
    model = train_surrogate(split.labeled, device=device, progress=progress, **cfg)
    save_surrogate(model, path)
    return model
