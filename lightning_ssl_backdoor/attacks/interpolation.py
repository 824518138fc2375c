"""Interpolation consistency poisoning (Carlini, USENIX Security 2021; 004 Sec. 3-4).

A targeted attack: make the victim classify one chosen image x* (a test image) as y* (the
attack's ``target``). N unlabeled poisons ``x_a = (1 - a) x' + a x*`` (Sec. 3.1, linear pixel
blend) bridge a source image x' of class y* to x*: ``a_0 = 0`` (x' itself) and ``a_{N-1} = 1`` (x*
itself) are fixed, the N - 2 others are drawn from a density rho on [0, 1] (normalised; Table 3's
eleven functions are in :data:`DENSITIES`, default ``1.5 - x``, which samples three times more
densely near the source). The poisons are appended to the unlabeled set.

Sources (``source``):

- ``"labeled"`` (Sec. 3.1): x' is a labeled image of class y* (one the surrogate classifies as y*
  when a model is given).
- ``"unlabeled"`` (Sec. 4.1, zero knowledge): x' is an unlabeled image that belongs to y* (the
  adversary knows its class, not the labeled set); ``support_paths`` extra images of class y* are
  connected to x' by their own paths (``interp(x', x^_i, a)``, same density, the duplicate
  ``a = 0`` endpoint dropped) to help x' get labeled y*; ``support_fraction`` of the budget goes to
  them.
- ``"adversarial"`` (Sec. 4.3, fine-tuning): x' = x* + delta, the nearest point found by
  signed-gradient descent (steps of 1/255, early stop) that the known initial model already
  classifies as y* after quantisation; then the path bridges x' to x*.

Choosing x' and x* (``source_choice``, ``target_choice``). The paper draws both uniformly at random
(Sec. 3.2.1) and notes that some sources and targets are much easier than others (Sec. 3.2.3, Fig. 3),
that the attack "gets stuck" when the label propagates only part of the way along the path (Sec. 4.4),
and that a short path from x' to x* propagates faster (Sec. 4.3, where x' is placed next to x*). Two
options make the path short without leaving the threat model:

- ``source_choice="nearest"``: x' is the candidate source (labeled, or unlabeled for the
  zero-knowledge variant, of class y*; the surrogate's filter still applies) nearest to x* in pixel
  L2 distance; the adversary knows the candidates (Sec. 3.1's assumption) and x*.
- ``target_choice="nearest"``: x* is the test image outside y* nearest (pixel L2) to any labeled image
  of class y*. This weakens the targeted threat model (the adversary picks which image to attack),
  so it is off by default and reported separately.

``"random"`` (the default for both) is the paper's behaviour: a seeded uniform draw.

"phi" in Table 3 is not defined in the paper; we read it as the standard normal density.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lightning_ssl_backdoor.attacks.adversarial import frozen, model_device, predict
from lightning_ssl_backdoor.attacks.base import Attack, Poisons
from lightning_ssl_backdoor.data.imageset import quantize
from lightning_ssl_backdoor.errors import ConfigError


def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


DENSITIES: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "(1-x)^2": lambda x: (1 - x) ** 2,
    "phi(x+.5)": lambda x: _phi(x + 0.5),
    "phi(x+.3)": lambda x: _phi(x + 0.3),
    "x": lambda x: x,
    "x^4+(1-x)^4": lambda x: x**4 + (1 - x) ** 4,
    "sqrt(1-x)": lambda x: np.sqrt(np.clip(1 - x, 0.0, None)),
    "x^2+(1-x)^2": lambda x: x**2 + (1 - x) ** 2,
    "1": lambda x: np.ones_like(x),
    "(1-x)^2+.5": lambda x: (1 - x) ** 2 + 0.5,
    "1-x": lambda x: 1 - x,
    "1.5-x": lambda x: 1.5 - x,
}
_ALIASES = {"uniform": "1", "linear": "x", "default": "1.5-x"}
SOURCES = ("labeled", "unlabeled", "adversarial")
CHOICES = ("random", "nearest")
_GRID = 200_001


def density_name(name: str) -> str:
    """Canonical Table 3 name: spaces removed, ``**`` -> ``^``, ``0.5`` -> ``.5``, aliases resolved."""
    key = str(name).strip().lower().replace(" ", "").replace("**", "^").replace("φ", "phi")
    key = re.sub(r"(?<![0-9])0\.", ".", key)
    key = _ALIASES.get(key, key)
    if key not in DENSITIES:
        raise ConfigError(f"unknown density '{name}'; choose one of: {', '.join(DENSITIES)}.")
    return key


def density_cdf(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, cdf)`` of the normalised density on a fine grid of [0, 1] (trapezoid rule)."""
    x = np.linspace(0.0, 1.0, _GRID)
    rho = DENSITIES[density_name(name)](x).astype(np.float64)
    if np.any(rho < 0):
        raise ConfigError(f"density '{name}' is negative somewhere on [0, 1].")
    cdf = np.concatenate([[0.0], np.cumsum((rho[1:] + rho[:-1]) * 0.5 * np.diff(x))])
    return x, cdf / cdf[-1]


def density_cdf_fn(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The CDF of the normalised density as a function (e.g. for ``scipy.stats.kstest``)."""
    grid, cdf = density_cdf(name)
    return lambda a: np.interp(np.asarray(a, dtype=np.float64), grid, cdf)


def sample_alphas(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from the normalised density (inverse CDF of seeded uniforms), sorted, float64."""
    grid, cdf = density_cdf(name)
    u = torch.rand(int(n), generator=generator, dtype=torch.float64).numpy()
    return torch.from_numpy(np.sort(np.interp(u, cdf, grid)))


def path_alphas(name: str, n: int, generator: torch.Generator, include_start: bool = True) -> torch.Tensor:
    """Alphas of one path of ``n`` points: 0 (if ``include_start``) and 1 fixed, the rest sampled."""
    fixed = 2 if include_start else 1
    if n < fixed:
        raise ConfigError(f"a path needs at least {fixed} points, got {n}; raise the budget.")
    inner = sample_alphas(name, n - fixed, generator)
    parts = ([torch.zeros(1, dtype=torch.float64)] if include_start else []) + [inner, torch.ones(1, dtype=torch.float64)]
    return torch.cat(parts)


def interpolate(x_source: torch.Tensor, x_target: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``(1 - a) x' + a x*`` for each alpha (float64 weights, float32 images ``[C, H, W]``)."""
    a = alphas.view(-1, 1, 1, 1).to(torch.float64)
    return ((1 - a) * x_source.double().unsqueeze(0) + a * x_target.double().unsqueeze(0)).float()


def nearest_row(candidates: torch.Tensor, x: torch.Tensor) -> int:
    """Index (into ``candidates`` ``[M, C, H, W]``) of the image nearest to ``x`` in pixel L2 distance
    (float64; ties go to the lowest index)."""
    if len(candidates) == 0:
        raise ConfigError("interpolation: no candidate images to choose the nearest from.")
    d = (candidates.double().flatten(1) - x.double().flatten().unsqueeze(0)).pow(2).sum(1)
    return int(torch.argmin(d))


def nearest_to_set(candidates: torch.Tensor, anchors: torch.Tensor) -> int:
    """Index of the candidate whose pixel L2 distance to its nearest anchor is smallest."""
    if len(candidates) == 0 or len(anchors) == 0:
        raise ConfigError("interpolation: no candidate or anchor images to choose the nearest from.")
    d = torch.cdist(candidates.double().flatten(1), anchors.double().flatten(1)).min(1).values
    return int(torch.argmin(d))


def nearest_adversarial(model, x: torch.Tensor, target: int, steps: int = 255,
                        step_size: float = 1.0 / 255.0, progress: bool = False) -> tuple[torch.Tensor, bool]:
    """Carlini Sec. 4.3: ``x' = x + delta`` near ``x`` (float ``[C, H, W]``) that the model labels
    ``target`` after quantisation; signed-gradient descent on the cross-entropy to ``target``,
    stopped at the first success. Returns (x' as uint8, success)."""
    dev = model_device(model)
    x0 = x.unsqueeze(0).to(dev)
    delta = torch.zeros_like(x0)
    tgt = torch.tensor([int(target)], device=dev)
    with frozen(model):
        for _ in tqdm(range(steps + 1), desc="x' search", disable=not progress, leave=False):
            q = quantize(x0 + delta)
            with torch.no_grad():
                if int(model(q.float() / 255.0).argmax(1)) == int(target):
                    return q[0].cpu(), True
            delta.requires_grad_(True)
            loss = F.cross_entropy(model((x0 + delta).clamp(0.0, 1.0)), tgt)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = (x0 + delta - step_size * grad.sign()).clamp(0.0, 1.0) - x0
    return quantize(x0 + delta)[0].cpu(), False


class InterpolationAttack(Attack):
    """Carlini's interpolation consistency poisoning; see the module docstring.

    The budget counts poison images (the whole path, endpoints included). Extra args:
    ``target_image`` (test-set row of x*; default: a seeded random test image not of class y*),
    ``source`` ("labeled" / "unlabeled" / "adversarial"), ``source_index`` (row of x' in the
    labeled or unlabeled set; default seeded), ``density`` (Table 3 name), ``support_paths``,
    ``support_fraction``, ``adv_steps`` (for ``source="adversarial"``), ``source_choice`` and
    ``target_choice`` (``"random"``, the paper's uniform draw, or ``"nearest"``: the class-y* source
    nearest to x* / the test image nearest to the labeled class-y* images; see the module docstring;
    an explicit ``source_index`` / ``target_image`` wins), ``targets`` (one y* per trial: the attack
    with seed s uses ``targets[s % len(targets)]`` instead of ``target``, so seeds 0-7 with
    ``targets: [0, 1, ..., 9]`` are Table 1's eight (x*, y*) pairs, each seed also drawing its x*).
    """

    name = "interpolation"
    default_budget = {"budget_rate": 0.005}
    default_trigger = None
    fixed_options = ("trigger",)

    def __init__(
        self,
        *,
        target_image: Optional[int] = None,
        source: str = "labeled",
        source_index: Optional[int] = None,
        density: str = "1.5-x",
        support_paths: int = 0,
        support_fraction: float = 0.5,
        adv_steps: int = 255,
        source_choice: str = "random",
        target_choice: str = "random",
        targets: Optional[list] = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("trigger") is not None:
            raise ConfigError("interpolation poisons carry no trigger (they interpolate to a test image); remove the trigger option.")
        super().__init__(**kwargs)
        if self.injection != "append":
            raise ConfigError("interpolation poisons have no source image in the unlabeled set; use injection='append'.")
        if source not in SOURCES:
            raise ConfigError(f"source must be one of {list(SOURCES)}, got {source!r}.")
        if int(support_paths) < 0 or not 0.0 <= float(support_fraction) < 1.0:
            raise ConfigError("support_paths must be >= 0 and support_fraction in [0, 1).")
        if source_choice not in CHOICES or target_choice not in CHOICES:
            raise ConfigError(f"source_choice and target_choice must be one of {list(CHOICES)}, "
                              f"got {source_choice!r} / {target_choice!r}.")
        if source == "adversarial" and source_choice != "random":
            raise ConfigError("source_choice applies to source='labeled' or 'unlabeled', not 'adversarial'.")
        if targets is not None:
            if (not isinstance(targets, (list, tuple)) or not targets
                    or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in targets)):
                raise ConfigError(f"targets must be a non-empty list of class indices, got {targets!r}.")
            self.target = int(targets[self.seed % len(targets)])
        self.targets = None if targets is None else [int(t) for t in targets]
        self.source_choice, self.target_choice = source_choice, target_choice
        self.target_image = None if target_image is None else int(target_image)
        self.source = source
        self.source_index = None if source_index is None else int(source_index)
        self.density = density_name(density)
        self.support_paths = int(support_paths)
        self.support_fraction = float(support_fraction)
        self.adv_steps = int(adv_steps)

    @property
    def needs_model(self) -> bool:
        return self.source == "adversarial"

    def build_trigger(self, image_shape):
        return None

    def _choose_source(self, images, rows, x_star, g, where: str) -> int:
        """x': ``source_index`` if given, else the row of ``images`` nearest to x* or a seeded draw."""
        if self.source_index is not None:
            return self.source_index
        if self.source_choice == "nearest":
            return int(rows[nearest_row(images[rows], x_star)])
        return self._pick(rows, g, f"{where} image of the target class")

    def _pick(self, rows: torch.Tensor, g: torch.Generator, what: str) -> int:
        if len(rows) == 0:
            raise ConfigError(f"interpolation: no {what} available; change target or source.")
        return int(rows[torch.randint(len(rows), (1,), generator=g)])

    def craft(self, split, pool, chosen, model, trigger, generator) -> Poisons:
        g = generator
        n = len(chosen)
        test = split.test
        if self.target_image is not None:
            if not 0 <= self.target_image < len(test):
                raise ConfigError(f"target_image {self.target_image} is not a row of the {len(test)}-image test set.")
            t_idx = self.target_image
        elif self.target_choice == "nearest":
            rows = torch.nonzero(test.targets != self.target).flatten()
            anchors = split.labeled.float()[torch.nonzero(split.labeled.labels == self.target).flatten()]
            t_idx = int(rows[nearest_to_set(test.float()[rows], anchors)])
        else:
            t_idx = self._pick(torch.nonzero(test.targets != self.target).flatten(), g, "test image outside the target class")
        x_star = test.float()[t_idx]
        y_star_img = int(test.targets[t_idx])
        if y_star_img == self.target:
            raise ConfigError(f"the target image {t_idx} already has class {self.target}; pick another target_image.")
        info: Dict[str, Any] = {"target_image": t_idx, "target_image_label": y_star_img, "source": self.source,
                                "source_choice": self.source_choice, "target_choice": self.target_choice}
        if self.source == "labeled":
            rows = torch.nonzero(split.labeled.labels == self.target).flatten()
            if model is not None and len(rows):
                ok = predict(model, split.labeled.float()[rows]) == self.target
                rows = rows[ok] if bool(ok.any()) else rows
            s_idx = self._choose_source(split.labeled.float(), rows, x_star, g, "labeled")
            x_src = split.labeled.float()[s_idx]
        elif self.source == "unlabeled":
            rows = torch.nonzero(split.unlabeled.targets == self.target).flatten()
            s_idx = self._choose_source(split.unlabeled.float(), rows, x_star, g, "unlabeled")
            x_src = split.unlabeled.float()[s_idx]
        else:
            s_idx = -1
            q, ok = nearest_adversarial(model, x_star, self.target, self.adv_steps, progress=self.progress)
            x_src = q.float() / 255.0
            info["adversarial_success"] = bool(ok)
            info["adversarial_linf"] = float((q.float() / 255.0 - x_star).abs().max())
        info["source_index"] = int(s_idx)
        info["path_l2"] = float((x_src - x_star).double().pow(2).sum().sqrt())

        n_support = int(round(self.support_fraction * n)) if self.support_paths > 0 else 0
        per = n_support // self.support_paths if self.support_paths else 0
        if self.support_paths and per < 1:
            raise ConfigError("budget too small for the support paths; raise the budget or support_fraction.")
        n_main = n - per * self.support_paths
        alphas = [path_alphas(self.density, n_main, g, include_start=True)]
        images = [interpolate(x_src, x_star, alphas[0])]
        path_id = [torch.zeros(n_main, dtype=torch.int64)]
        true = [torch.where(alphas[0] < 0.5, torch.tensor(self.target), torch.tensor(y_star_img))]
        if self.support_paths:
            rows = torch.nonzero(split.unlabeled.targets == self.target).flatten()
            if self.source == "unlabeled":
                rows = rows[rows != s_idx]
            if len(rows) < self.support_paths:
                raise ConfigError(f"only {len(rows)} unlabeled images of class {self.target} for {self.support_paths} support paths.")
            sup = rows[torch.randperm(len(rows), generator=g)[: self.support_paths]]
            info["support_images"] = [int(r) for r in sup]
            for k, r in enumerate(sup, start=1):
                a = path_alphas(self.density, per, g, include_start=False)
                alphas.append(a)
                images.append(interpolate(x_src, split.unlabeled.float()[int(r)], a))
                path_id.append(torch.full((per,), k, dtype=torch.int64))
                true.append(torch.full((per,), self.target, dtype=torch.int64))
        P = sum(len(a) for a in alphas)
        return Poisons(
            images=torch.cat(images),
            sources=torch.full((P,), -1, dtype=torch.int64),
            true_labels=torch.cat(true),
            meta={"alpha": torch.cat(alphas), "path": torch.cat(path_id)},
            info=info,
        )
