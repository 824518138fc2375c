"""`Attack`: the base class every attack shares (budget, seeded selection, injection).

An attack turns an :class:`SSLSplit` into a :class:`PoisonedSplit`:

1. ``build_trigger`` makes the trigger for the data's image shape (``None`` for targeted attacks);
2. ``candidates`` lists the images of the poisoned set (unlabeled, or labeled for poison-label
   attacks) that may be poisoned, e.g. target-class images for clean-label attacks;
3. the budget (``budget`` count, ``budget_rate`` of the poisoned set, or ``target_class_rate`` of
   its target-class images; exactly one, else the attack's default) fixes how many sources;
4. ``torch.randperm`` on a ``torch.Generator`` seeded with ``seed`` picks them;
5. ``craft`` makes the poisons in float [0, 1] (batched, model frozen in eval mode);
6. the poisons are quantised (the only place) and injected: ``"append"`` adds copies at the end
   of the set with source index -1 (originals stay), ``"replace"`` overwrites the source image
   (when one source yields several poisons, as in DeNeB, the first overwrites it and the rest are
   appended).

Per-poison metadata (e.g. Carlini's alpha, DeNeB's w) ends up in ``PoisonedSplit.attack["arrays"]``,
aligned with ``PoisonedSplit.attack["arrays"]["position"]`` (each poison's row in its set).
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

import torch

from lightning_ssl_backdoor.data.imageset import ImageSet, quantize
from lightning_ssl_backdoor.data.split import PoisonedSplit, SSLSplit
from lightning_ssl_backdoor.signatures import keyword_parameters, publish_signature
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError
from lightning_ssl_backdoor.triggers import TRIGGER_FACTORIES, Trigger, build_trigger

INJECTIONS = ("append", "replace")


@dataclass
class Poisons:
    """What ``Attack.craft`` returns.

    ``images``: float ``[P, C, H, W]`` in [0, 1] (or uint8 when already quantised);
    ``sources``: int64 ``[P]`` row of each poison's source image in the poisoned set (-1: none);
    ``true_labels``: int64 ``[P]`` ground truth kept for evaluation;
    ``labels``: int64 ``[P]`` visible labels for labeled-set attacks (``None`` for unlabeled ones);
    ``is_poison``: bool ``[P]`` (False for label-preserving extras such as WaNet's noise samples);
    ``meta``: per-poison arrays (first dim ``P``); ``info``: JSON-able facts about the attack run;
    ``trigger``: a trigger made while crafting (e.g. Narcissus's optimised one), replacing the built one.
    """

    images: torch.Tensor
    sources: torch.Tensor
    true_labels: torch.Tensor
    labels: Optional[torch.Tensor] = None
    is_poison: Optional[torch.Tensor] = None
    meta: Dict[str, torch.Tensor] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)
    trigger: Optional[Trigger] = None

    def __post_init__(self) -> None:
        p = int(self.images.shape[0])
        self.sources = torch.as_tensor(self.sources, dtype=torch.int64).reshape(-1)
        self.true_labels = torch.as_tensor(self.true_labels, dtype=torch.int64).reshape(-1)
        if self.is_poison is None:
            self.is_poison = torch.ones(p, dtype=torch.bool)
        for name, t in [("sources", self.sources), ("true_labels", self.true_labels), ("is_poison", self.is_poison)]:
            if t.shape[0] != p:
                raise DataFormatError(f"Poisons.{name} has {t.shape[0]} entries for {p} images.")
        for k, v in self.meta.items():
            if v.shape[0] != p:
                raise DataFormatError(f"per-poison metadata '{k}' has {v.shape[0]} entries for {p} poisons.")


def to_json(obj: Any) -> Any:
    """A JSON round trip (tuples -> lists), so configs compare equal after saving and loading."""
    return json.loads(json.dumps(obj, sort_keys=True))


def quantize_within(x: torch.Tensor, reference: torch.Tensor, eps: float) -> torch.Tensor:
    """Quantise float ``x`` and keep it within ``floor(255 eps)`` grey levels of the uint8
    ``reference``, so an L-inf budget ``eps`` holds exactly after rounding."""
    q = quantize(x).to(torch.int16)
    k = int(math.floor(float(eps) * 255.0 + 1e-6))
    ref = reference.to(device=q.device, dtype=torch.int16)
    return torch.minimum(torch.maximum(q, ref - k), ref + k).clamp(0, 255).to(torch.uint8)


class Attack:
    """Base class. Subclasses set ``name``, optionally ``poisons_labeled`` (labeled-set attacks),
    ``requires_model``, ``default_budget`` / ``default_injection`` / ``default_trigger``, and
    implement ``candidates`` and ``craft``. Every constructor argument is stored under its own name
    so that :meth:`config` can report it (and YAML / jsonargparse can build the attack).

    The options below live here only: a subclass declares its own options and passes the rest on,
    ``def __init__(self, *, eps: float = ..., **kwargs): super().__init__(**kwargs)``
    (jsonargparse follows ``**kwargs`` into this signature; :meth:`options` lists them all). A base
    option a subclass fixes itself goes into ``fixed_options`` (not accepted by ``build_attack``).

    Args:
        target: the attacker's label (one variable, never hard-coded).
        seed: seeds every random choice of the attack (selection, patterns, draws).
        budget: number of source images to poison.
        budget_rate: ... as a fraction of the poisoned set (unlabeled, or labeled for poison-label).
        target_class_rate: ... as a fraction of that set's target-class images.
        injection: "append" or "replace" (see module docstring); ``None``: the attack's default.
        trigger: trigger config ``{"name": ..., **options}`` (see ``triggers.build_trigger``);
            ``None``: the attack's default.
        progress: show tqdm progress bars on long loops.
    """

    name: ClassVar[str] = ""
    poisons_labeled: ClassVar[bool] = False
    requires_model: ClassVar[bool] = False
    default_budget: ClassVar[Dict[str, float]] = {"budget_rate": 0.01}
    default_injection: ClassVar[str] = "append"
    default_trigger: ClassVar[Optional[Dict[str, Any]]] = {"name": "badnets"}
    fixed_options: ClassVar[tuple] = ()

    def __init__(
        self,
        target: int = 0,
        seed: int = 0,
        budget: Optional[int] = None,
        budget_rate: Optional[float] = None,
        target_class_rate: Optional[float] = None,
        injection: Optional[str] = None,
        trigger: Optional[Dict[str, Any]] = None,
        progress: bool = True,
    ) -> None:
        if isinstance(target, bool) or int(target) != target or int(target) < 0:
            raise ConfigError(f"target must be a non-negative class index, got {target!r}.")
        given = [k for k, v in (("budget", budget), ("budget_rate", budget_rate),
                                ("target_class_rate", target_class_rate)) if v is not None]
        if len(given) > 1:
            raise ConfigError(f"give only one of budget, budget_rate, target_class_rate; got {', '.join(given)}.")
        if budget is not None and (int(budget) != budget or budget < 1):
            raise ConfigError(f"budget must be a positive integer number of images, got {budget!r}.")
        for k, v in (("budget_rate", budget_rate), ("target_class_rate", target_class_rate)):
            if v is not None and not 0.0 < float(v) <= 1.0:
                raise ConfigError(f"{k} must lie in (0, 1], got {v!r}.")
        injection = self.default_injection if injection is None else str(injection)
        if injection not in INJECTIONS:
            raise ConfigError(f"injection must be one of {list(INJECTIONS)}, got {injection!r}.")
        if trigger is not None and (not isinstance(trigger, dict) or "name" not in trigger):
            raise ConfigError("trigger must be a mapping with a 'name' key, e.g. {name: badnets, size: 3}.")
        self.target = int(target)
        self.seed = int(seed)
        self.budget = None if budget is None else int(budget)
        self.budget_rate = None if budget_rate is None else float(budget_rate)
        self.target_class_rate = None if target_class_rate is None else float(target_class_rate)
        self.injection = injection
        self.trigger = None if trigger is None else dict(trigger)
        self.progress = bool(progress)
        self.work_dir: Optional[str] = None  # set by the CLI: where long loops checkpoint their chunks

    # ------------------------------------------------------------------ config
    @classmethod
    def options(cls) -> Dict[str, inspect.Parameter]:
        """Every constructor option: the class's own ``__init__`` parameters and, through
        ``**kwargs``, those of the classes it passes them on to (up to :class:`Attack`), less the
        ``fixed_options`` the class sets itself."""
        return keyword_parameters(cls, cls.fixed_options)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # the full option list as ``__init__.__signature__`` (inspect, IDEs, the config parsers)
        super().__init_subclass__(**kwargs)
        publish_signature(cls, cls.fixed_options)

    @property
    def needs_model(self) -> bool:
        """Whether ``poison`` needs a (surrogate) model."""
        return self.requires_model

    def config(self) -> Dict[str, Any]:
        """``{"name": ..., <every constructor argument>: value}`` (JSON-able)."""
        out: Dict[str, Any] = {"name": self.name}
        for k in self.options():
            if k == "progress" or k.startswith("_"):
                continue
            out[k] = getattr(self, k)
        return to_json(out)

    # ------------------------------------------------------------- hooks
    def build_trigger(self, image_shape) -> Optional[Trigger]:
        spec = self.trigger if self.trigger is not None else self.default_trigger
        if spec is None:
            return None
        spec = dict(spec)
        if "seed" not in spec and _accepts_seed(spec["name"]):
            spec["seed"] = self.seed
        return build_trigger(spec, image_shape)

    def candidates(self, split: SSLSplit, pool: ImageSet) -> torch.Tensor:
        """Rows of ``pool`` that may be poisoned (default: all)."""
        return torch.arange(len(pool))

    def craft(self, split: SSLSplit, pool: ImageSet, chosen: torch.Tensor, model, trigger,
              generator: torch.Generator) -> Poisons:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------ helpers
    def target_rows(self, pool: ImageSet) -> torch.Tensor:
        return torch.nonzero(pool.targets == self.target).flatten()

    def non_target_rows(self, pool: ImageSet) -> torch.Tensor:
        return torch.nonzero((pool.targets != self.target) & (pool.targets >= 0)).flatten()

    def resolve_budget(self, pool: ImageSet, candidates: torch.Tensor) -> int:
        if self.budget is not None:
            n, what = self.budget, f"budget={self.budget}"
        else:
            rates = {"budget_rate": self.budget_rate, "target_class_rate": self.target_class_rate}
            key = next((k for k, v in rates.items() if v is not None), None)
            if key is None:
                key, rate = next(iter(self.default_budget.items()))
            else:
                rate = rates[key]
            base = len(pool) if key == "budget_rate" else int((pool.targets == self.target).sum())
            n, what = max(1, int(round(float(rate) * base))), f"{key}={rate} ({base} images)"
        if n > len(candidates):
            raise ConfigError(
                f"{self.name}: {what} asks for {n} poisons but only {len(candidates)} images are "
                "eligible; lower the budget."
            )
        return int(n)

    # ------------------------------------------------------------ main entry
    def poison(self, split: SSLSplit, model: Optional[torch.nn.Module] = None) -> PoisonedSplit:
        """Run the attack on ``split`` (``model``: the surrogate, for attacks that need one)."""
        if not isinstance(split, SSLSplit):
            raise ConfigError(f"poison() takes an SSLSplit, got {type(split).__name__}.")
        if isinstance(split, PoisonedSplit) and (
            bool(split.unlabeled_poison_mask.any()) or bool(split.labeled_poison_mask.any())
        ):
            raise ConfigError("this split is already poisoned; start from the clean SSLSplit.")
        if split.num_classes and self.target >= split.num_classes:
            raise ConfigError(f"target {self.target} is out of range for {split.num_classes} classes.")
        if self.needs_model and model is None:
            raise ConfigError(f"attack '{self.name}' needs a surrogate model; pass model= (see attacks.surrogate).")
        pool = split.labeled if self.poisons_labeled else split.unlabeled
        trigger = self.build_trigger(pool.image_shape)
        cand = self.candidates(split, pool)
        n = self.resolve_budget(pool, cand)
        g = torch.Generator().manual_seed(self.seed)
        chosen = torch.sort(cand[torch.randperm(len(cand), generator=g)[:n]]).values
        poisons = self.craft(split, pool, chosen, model, trigger, g)
        return self._inject(split, pool, poisons, poisons.trigger if poisons.trigger is not None else trigger)

    def _inject(self, split: SSLSplit, pool: ImageSet, poisons: Poisons, trigger) -> PoisonedSplit:
        imgs = poisons.images if poisons.images.dtype == torch.uint8 else quantize(poisons.images.cpu())
        imgs = imgs.cpu()
        P = imgs.shape[0]
        if tuple(imgs.shape[1:]) != tuple(pool.images.shape[1:]):
            raise DataFormatError(f"poisons have shape {tuple(imgs.shape[1:])}, the set {tuple(pool.images.shape[1:])}.")
        images = pool.images.clone()
        labels = pool.labels.clone()
        true = pool.targets.clone()
        indices = (split.labeled_indices if self.poisons_labeled else split.unlabeled_indices).clone()
        mask = torch.zeros(len(pool), dtype=torch.bool)
        if self.poisons_labeled:
            if poisons.labels is None:
                raise DataFormatError(f"attack '{self.name}' poisons the labeled set but gave no labels.")
            vis = torch.as_tensor(poisons.labels, dtype=torch.int64).reshape(-1)
        else:
            vis = torch.full((P,), -1, dtype=torch.int64)  # unlabeled: nothing visible
        position = torch.empty(P, dtype=torch.int64)
        replaced: set[int] = set()
        appended = []
        for i in range(P):
            s = int(poisons.sources[i])
            if self.injection == "replace" and s >= 0 and s not in replaced:
                replaced.add(s)
                images[s] = imgs[i]
                labels[s] = vis[i]
                true[s] = poisons.true_labels[i]
                mask[s] = bool(poisons.is_poison[i])
                position[i] = s
            else:
                position[i] = len(pool) + len(appended)
                appended.append(i)
        if appended:
            a = torch.tensor(appended, dtype=torch.int64)
            images = torch.cat([images, imgs[a]])
            labels = torch.cat([labels, vis[a]])
            true = torch.cat([true, poisons.true_labels[a]])
            indices = torch.cat([indices, torch.full((len(a),), -1, dtype=torch.int64)])
            mask = torch.cat([mask, poisons.is_poison[a].to(torch.bool)])
        new_pool = ImageSet(images=images, labels=labels, classes=list(pool.classes), true_labels=true)
        arrays = {k: v.detach().cpu() for k, v in poisons.meta.items()}
        arrays["position"] = position
        arrays["source"] = poisons.sources.clone()
        arrays["is_poison"] = poisons.is_poison.clone()
        attack = {
            "name": self.name,
            "config": self.config(),
            "pool": "labeled" if self.poisons_labeled else "unlabeled",
            "num_poisons": int(poisons.is_poison.sum()),
            "info": to_json(poisons.info),
            "arrays": arrays,
        }
        common = dict(test=split.test, seed=split.seed, trigger=trigger, target=self.target, attack=attack)
        if self.poisons_labeled:
            return PoisonedSplit(labeled=new_pool, unlabeled=split.unlabeled, labeled_indices=indices,
                                 unlabeled_indices=split.unlabeled_indices, labeled_poison_mask=mask,
                                 unlabeled_poison_mask=None, **common)
        return PoisonedSplit(labeled=split.labeled, unlabeled=new_pool, labeled_indices=split.labeled_indices,
                             unlabeled_indices=indices, unlabeled_poison_mask=mask,
                             labeled_poison_mask=None, **common)


def _accepts_seed(name: str) -> bool:
    f = TRIGGER_FACTORIES.get(str(name).lower())
    return f is not None and "seed" in inspect.signature(f).parameters
