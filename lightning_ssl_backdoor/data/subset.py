"""Reduced-scale data: some classes, and a fixed number of labeled / unlabeled / test images per class.

``subset`` in a data config (``SSLDataModule(subset=...)``, ``data.subset`` in an experiment)::

    subset:
      classes: [airplane, automobile, frog, truck]   # names or indices; this order = new labels 0..k-1
      labeled: 50        # labeled images per class
      unlabeled: 250     # unlabeled images per class (drawn from the rest of the training images)
      test: 250          # test images per class

Every key is optional (``classes`` absent: all classes; a count absent: all that remain). The draw is
seeded by the split seed, so one seed fixes the subset as it fixes the split. The class order given
is the new label order, so the last class listed is the subset's last class (a natural target).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.split import SSLSplit, make_split
from lightning_ssl_backdoor.errors import ConfigError

SUBSET_KEYS = ("classes", "labeled", "unlabeled", "test")


def check_subset(subset: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """``subset`` validated (unknown keys, negative counts): a ConfigError naming the problem."""
    if subset is None:
        return None
    if not isinstance(subset, dict):
        raise ConfigError(f"data subset must be a mapping with keys {', '.join(SUBSET_KEYS)}, got {subset!r}.")
    unknown = sorted(set(subset) - set(SUBSET_KEYS))
    if unknown:
        raise ConfigError(f"data subset has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SUBSET_KEYS)}.")
    for key in ("labeled", "unlabeled", "test"):
        value = subset.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (1 if key != "unlabeled" else 0)):
            raise ConfigError(f"data subset '{key}' must be a positive integer per class, got {value!r}.")
    if subset.get("unlabeled") is not None and subset.get("labeled") is None:
        raise ConfigError("data subset 'unlabeled' needs 'labeled' too (both are counts per class).")
    return dict(subset)


def _class_indices(data: ImageSet, classes) -> list[int]:
    if classes is None:
        return list(range(data.num_classes))
    out = []
    for c in classes:
        if isinstance(c, int) and not isinstance(c, bool):
            if not 0 <= c < data.num_classes:
                raise ConfigError(f"subset class index {c} is out of range for {data.num_classes} classes.")
            out.append(c)
        elif str(c) in data.classes:
            out.append(data.classes.index(str(c)))
        else:
            raise ConfigError(f"subset class '{c}' is not a class of this data set ({', '.join(data.classes)}).")
    if len(set(out)) != len(out) or len(out) < 2:
        raise ConfigError(f"subset classes must name at least two distinct classes, got {list(classes)!r}.")
    return out


def select_classes(data: ImageSet, keep: list[int], per_class: Optional[int], g: torch.Generator) -> ImageSet:
    """The images of classes ``keep`` (relabelled 0..k-1 in that order), ``per_class`` of each at random."""
    chosen, new_labels = [], []
    for new, old in enumerate(keep):
        pool = torch.nonzero(data.labels == old).flatten()
        if per_class is not None:
            if pool.numel() < per_class:
                raise ConfigError(
                    f"class '{data.classes[old]}' has {pool.numel()} images but the subset asks for {per_class}; lower it."
                )
            pool = torch.sort(pool[torch.randperm(pool.numel(), generator=g)[:per_class]]).values
        chosen.append(pool)
        new_labels.append(torch.full((pool.numel(),), new, dtype=torch.int64))
    idx = torch.cat(chosen)
    order = torch.argsort(idx)  # keep the data set's order
    return ImageSet(images=data.images[idx[order]], labels=torch.cat(new_labels)[order],
                    classes=[data.classes[k] for k in keep])


def subset_split(train: ImageSet, test: ImageSet, subset: Optional[dict[str, Any]], seed: int = 0,
                 **split_kwargs) -> SSLSplit:
    """:func:`make_split` after applying ``subset`` (see the module docstring) with seed ``seed``."""
    subset = check_subset(subset)
    if not subset:
        return make_split(train, test, seed=seed, **split_kwargs)
    g = torch.Generator().manual_seed(10_007 + int(seed))
    keep = _class_indices(train, subset.get("classes"))
    if test.classes and [test.classes[k] for k in keep] != [train.classes[k] for k in keep]:
        raise ConfigError("train and test class lists differ; the subset cannot pick the same classes in both.")
    labeled, unlabeled = subset.get("labeled"), subset.get("unlabeled")
    per_class = labeled + unlabeled if labeled is not None and unlabeled is not None else None
    train = select_classes(train, keep, per_class, g)
    test = select_classes(test, keep, subset.get("test"), g)
    if labeled is not None:
        split_kwargs = {**split_kwargs, "num_labeled": None, "labels_per_class": labeled}
    return make_split(train, test, seed=seed, **split_kwargs)
