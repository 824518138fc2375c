"""``defense: oracle_removal``: the row's split with every poison removed, a reference, not a defense.

The runner knows which training images are poisons (the split's ``labeled_poison_mask`` and
``unlabeled_poison_mask``); no defense may read them. This row drops exactly those images from both
pools and trains the row's algorithm on the rest, so it shows what the victim learns from the same
labeled and clean unlabeled images WITHOUT the attack's poisons:

- a targeted trial (Carlini 2021, Table 1) whose x* this row already predicts as y* is not a success
  of the poisoning: the victim labels x* as y* on its own (the report marks such trials vacuous);
- a trigger's ASR under this row is its base rate on the very split the attack used;
- a detector that removes every poison (recall 1) cannot do better than this row.

``defense_info``: ``removed_labeled`` / ``removed_unlabeled`` (poisons dropped per pool).
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_ssl_backdoor.data import SSLSplit
from lightning_ssl_backdoor.defenses.base import DataDefense, DefenseContext, register_defense
from lightning_ssl_backdoor.defenses.influence_defense import filter_pool

__all__ = ["OracleRemoval"]


@register_defense
class OracleRemoval(DataDefense):
    """Drop every known poison (labeled and unlabeled) and train on the rest; no options."""

    name = "oracle_removal"

    def filter(self, split: SSLSplit, ctx: DefenseContext) -> tuple[SSLSplit, dict[str, Any]]:
        info: dict[str, Any] = {}
        for pool in ("labeled", "unlabeled"):
            mask = getattr(split, f"{pool}_poison_mask", None)
            mask = torch.zeros(len(getattr(split, pool)), dtype=torch.bool) if mask is None else mask.cpu().bool()
            info[f"removed_{pool}"] = int(mask.sum())
            if bool(mask.any()):
                split = filter_pool(split, ~mask, pool, "the attack poisoned every image of the pool")
        return split, info
