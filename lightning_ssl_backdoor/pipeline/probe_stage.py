"""The probe stage (issue 36, opt-in through the experiment's ``probe`` setting): DeNeB's
perturbation applied to test images, for :class:`~lightning_ssl_backdoor.ssl.probe.LearnedFeatureProbe`.

``probe: {attack: <label of a DeNeB attack in the config>, images: N}``. The perturbation of a test
image is Alg. 1 of Yan et al. (Eq. 16; :func:`~lightning_ssl_backdoor.attacks.deneb.deneb_perturbation`)
run by the attacker's theta_0 on that image, with the named attack's settings (eps, steps, lr,
update, EOT views, feature term): the same generator that made the poisons, so "the perturbation
alone" on a test image means what it means on a poison. A mean ("universal") perturbation was
not used: Alg. 1's perturbations are per image (each pulls its own image's features towards its
own nearest target anchor), and their mean is no perturbation the attack ever makes. Alg. 1 costs
~the attack's own crafting per image, so it runs on ``images`` (default 128) non-target test
images drawn with the seed, each twice (clean, for the ``perturbation`` view; triggered, for
``both``), once per seed: cached in ``OUTPUT/cache/probe-<key>/probe.npz`` (chunks checkpointed)
and shared by every row of that seed. The full P is added (w = 0 of Eq. 17-18), and the result is
quantised within eps grey levels of the clean (resp. triggered) image as the poisons are.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lightning_ssl_backdoor.attacks import build_attack_from_spec
from lightning_ssl_backdoor.attacks.base import quantize_within
from lightning_ssl_backdoor.attacks.chunks import ChunkStore
from lightning_ssl_backdoor.attacks.deneb import DeNeBAttack, deneb_perturbation
from lightning_ssl_backdoor.data import triggered_copy
from lightning_ssl_backdoor.data.artifacts import load_arrays, save_arrays
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.io_lock import waiting_lock
from lightning_ssl_backdoor.pipeline.attack_stage import surrogate_model
from lightning_ssl_backdoor.pipeline.config import config_hash
from lightning_ssl_backdoor.ssl.probe import LearnedFeatureProbe, ProbeSet

__all__ = ["probe_callback", "probe_set"]


def probe_callback(runner, seed: int) -> LearnedFeatureProbe:
    """The row's probe callback (the config's ``probe`` set), its :class:`ProbeSet` made or cached."""
    probe, target = probe_set(runner, seed)
    return LearnedFeatureProbe(probe, target, views=int(runner.cfg.probe.get("views", 4)))


def probe_set(runner, seed: int) -> tuple[ProbeSet, int]:
    cfg = dict(runner.cfg.probe or {})
    unknown = set(cfg) - {"attack", "images", "views"}
    if unknown or "attack" not in cfg:
        raise ConfigError(f"probe takes {{attack: <a DeNeB attack's label>, images: N, views: K}}; got {cfg!r}.")
    spec = next((a for a in runner.cfg.attacks if a is not None and cfg["attack"] in (a.display, a.name)), None)
    if spec is None:
        raise ConfigError(f"probe: no attack called {cfg['attack']!r} in the config's attacks.")
    split, akey = runner.attacked_split(seed, spec)
    n = int(cfg.get("images", 128))
    folder = runner.cache / f"probe-{config_hash(akey, 'probe', n, asdict(spec), runner.cfg.surrogate)}"
    path = folder / "probe.npz"
    folder.mkdir(parents=True, exist_ok=True)
    with waiting_lock(folder):
        if not path.is_file():
            _make(split, spec, seed, n, path, runner.surrogate_dir(seed), runner.cfg.surrogate, runner.progress)
    arrays, meta = load_arrays(path)
    views = {k: torch.from_numpy(arrays[k]) for k in ("trigger", "perturbation", "both")}
    probe = ProbeSet(torch.from_numpy(arrays["clean"]), torch.from_numpy(arrays["labels"]), views)
    return probe, int(meta["target"])


def _make(split, spec, seed: int, n: int, path: Path, surrogate_dir: Path, surrogate: dict[str, Any],
          progress: bool) -> None:
    att = build_attack_from_spec({"name": spec.name, **spec.init_args, "seed": seed}, progress=progress)
    if not isinstance(att, DeNeBAttack):
        raise ConfigError(f"probe: attack {spec.display!r} is not DeNeB; the probe needs its perturbation generator.")
    target = int(split.target)
    g = torch.Generator().manual_seed(int(seed) + 36_000)
    candidates = torch.nonzero(split.test.targets != target).flatten()
    idx = candidates[torch.randperm(len(candidates), generator=g)[:n]].sort().values
    clean = split.test.images[idx]
    trig = triggered_copy(clean, split.trigger)
    x, xt = clean.float() / 255.0, trig.float() / 255.0
    anchors = split.labeled.float()[split.labeled.labels == target]
    m = min(att.anchor_batch, len(anchors))
    bidx = torch.stack([torch.randperm(len(anchors), generator=g)[:m] for _ in range(2 * len(idx))])
    offsets, pad = None, 0
    if att.eot:
        pad = att.eot_pad if att.eot_pad is not None else max(1, round(x.shape[-1] / 8))
        offsets = torch.randint(0, 2 * pad + 1, (2 * len(idx), att.steps, att.eot, 2), generator=g, dtype=torch.uint8)
        if att.eot_flip:
            flip = torch.randint(0, 2, (2 * len(idx), att.steps, att.eot, 1), generator=g, dtype=torch.uint8)
            offsets = torch.cat([offsets, flip], dim=3)
    model = surrogate_model(split, surrogate, seed, surrogate_dir, progress)
    delta = deneb_perturbation(
        model, torch.cat([x, xt]), anchors, bidx, target, att.eps, att.steps, att.lr, att.lr_decay,
        att.decay_every, att.nn_every, att.lam, att.update, att.chunk_size, progress,
        ChunkStore(str(path.parent / "chunks")), f"probe|{seed}|{n}", att.precision, offsets, pad, att.feature_term,
    )
    k = len(idx)
    pert = quantize_within(x + delta[:k], clean, att.eps)
    both = quantize_within(xt + delta[k:], trig, att.eps)
    save_arrays(path, {"clean": clean, "labels": split.test.targets[idx].long(), "index": idx,
                       "trigger": trig, "perturbation": pert, "both": both},
                {"target": target, "attack": spec.display, "images": k, "seed": int(seed)})
