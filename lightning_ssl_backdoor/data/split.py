"""Labeled / unlabeled / test splits (``SSLSplit``) and their poisoned form (``PoisonedSplit``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.errors import ConfigError, DataFormatError


@dataclass
class SSLSplit:
    """A semi-supervised split.

    ``unlabeled.labels`` are all -1; ``unlabeled.true_labels`` hold the hidden ground truth.
    ``labeled_indices`` / ``unlabeled_indices`` index the source training set (-1 marks an image
    that does not come from it, such as an appended poison).
    """

    labeled: ImageSet
    unlabeled: ImageSet
    test: ImageSet
    labeled_indices: torch.Tensor
    unlabeled_indices: torch.Tensor
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return self.test.num_classes or self.labeled.num_classes

    @property
    def classes(self) -> list[str]:
        return self.test.classes or self.labeled.classes


@dataclass
class PoisonedSplit(SSLSplit):
    """An ``SSLSplit`` after an attack.

    ``trigger`` turns float [0, 1] batches into triggered batches (applied to test images for ASR);
    ``target`` is the attacker's label; the poison masks are the ground truth that learners never
    see and detectors are scored against. ``attack`` is the attack's manifest entry.
    """

    trigger: Optional[torch.nn.Module] = None
    target: Optional[int] = None
    unlabeled_poison_mask: Optional[torch.Tensor] = None
    labeled_poison_mask: Optional[torch.Tensor] = None
    attack: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.unlabeled_poison_mask is None:
            self.unlabeled_poison_mask = torch.zeros(len(self.unlabeled), dtype=torch.bool)
        if self.labeled_poison_mask is None:
            self.labeled_poison_mask = torch.zeros(len(self.labeled), dtype=torch.bool)
        self.unlabeled_poison_mask = self.unlabeled_poison_mask.to(torch.bool)
        self.labeled_poison_mask = self.labeled_poison_mask.to(torch.bool)
        if self.unlabeled_poison_mask.shape[0] != len(self.unlabeled):
            raise ConfigError("unlabeled_poison_mask must have one entry per unlabeled image.")
        if self.labeled_poison_mask.shape[0] != len(self.labeled):
            raise ConfigError("labeled_poison_mask must have one entry per labeled image.")
        if self.target is not None and not 0 <= int(self.target) < max(1, self.num_classes):
            raise ConfigError(
                f"target {self.target} is out of range for {self.num_classes} classes."
            )


    def triggered_poison_mask(self) -> torch.Tensor:
        """Which images of the poisoned pool carry the trigger (bool over that pool).

        Every poison, unless the attack recorded a per-poison ``triggered`` array (DeNeB: only the
        strong poisons carry it; the weak ones are the untriggered contrast). This is the set a
        pseudo-label hijack has to reach, and what the hijack diagnostics count.
        """
        pool_mask = self.labeled_poison_mask if self.attack.get("pool") == "labeled" else self.unlabeled_poison_mask
        arrays = self.attack.get("arrays") or {}
        if "triggered" not in arrays or "position" not in arrays:
            return pool_mask.clone()
        out = torch.zeros_like(pool_mask)
        trig = torch.as_tensor(arrays["triggered"]).to(torch.bool).reshape(-1)
        pos = torch.as_tensor(arrays["position"]).to(torch.int64).reshape(-1)
        out[pos[trig]] = True
        return out & pool_mask


def _per_class_counts(num_labeled: Optional[int], labels_per_class: Optional[int], c: int) -> list[int]:
    if (num_labeled is None) == (labels_per_class is None):
        raise ConfigError("give exactly one of num_labeled (total) or labels_per_class.")
    if labels_per_class is not None:
        if labels_per_class < 1:
            raise ConfigError(f"labels_per_class must be >= 1, got {labels_per_class}.")
        return [int(labels_per_class)] * c
    assert num_labeled is not None
    if num_labeled < c:
        raise ConfigError(
            f"num_labeled={num_labeled} is smaller than the number of classes ({c}); a "
            "class-balanced split needs at least one label per class."
        )
    base, extra = divmod(int(num_labeled), c)
    return [base + (1 if k < extra else 0) for k in range(c)]


def make_split(
    train: ImageSet,
    test: ImageSet,
    num_labeled: Optional[int] = None,
    labels_per_class: Optional[int] = None,
    include_labeled_in_unlabeled: bool = False,
    seed: int = 0,
    num_unlabeled: Optional[int] = None,
) -> SSLSplit:
    """Class-balanced, seeded labeled selection; the rest (optionally all) becomes unlabeled.

    ``num_unlabeled`` optionally caps the unlabeled pool (a seeded random subset) for reduced-scale
    runs. The chosen indices are recorded in the returned split.
    """
    c = train.num_classes
    if c == 0:
        raise ConfigError("the training set has no class names; cannot make a class-balanced split.")
    if test.classes and list(test.classes) != list(train.classes):
        # label k must mean the same class in training and test (image folders: the same
        # class sub-folder names under train/ and test/)
        raise DataFormatError(
            f"the test set's classes {list(test.classes)} differ from the training set's {list(train.classes)}; "
            "give both splits the same class names (for image folders, the same sub-folders)."
        )
    counts = _per_class_counts(num_labeled, labels_per_class, c)
    g = torch.Generator().manual_seed(int(seed))
    labels = train.labels
    chosen = []
    for k in range(c):
        pool = torch.nonzero(labels == k).flatten()
        if pool.numel() < counts[k]:
            raise ConfigError(
                f"class {k} ({train.classes[k]}) has {pool.numel()} images but {counts[k]} labels "
                "were requested; lower num_labeled / labels_per_class."
            )
        perm = pool[torch.randperm(pool.numel(), generator=g)]
        chosen.append(perm[: counts[k]])
    labeled_idx = torch.sort(torch.cat(chosen)).values
    if include_labeled_in_unlabeled:
        unlabeled_idx = torch.arange(len(train))
    else:
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[labeled_idx] = False
        unlabeled_idx = torch.nonzero(keep).flatten()
    if num_unlabeled is not None:
        if num_unlabeled < 1:
            raise ConfigError(f"num_unlabeled must be >= 1, got {num_unlabeled}.")
        perm = torch.randperm(unlabeled_idx.numel(), generator=g)[:num_unlabeled]
        unlabeled_idx = torch.sort(unlabeled_idx[perm]).values
    return SSLSplit(
        labeled=train.subset(labeled_idx),
        unlabeled=train.subset(unlabeled_idx).unlabeled(),
        test=test,
        labeled_indices=labeled_idx,
        unlabeled_indices=unlabeled_idx,
        seed=int(seed),
    )
