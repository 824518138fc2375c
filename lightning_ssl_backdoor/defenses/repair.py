"""The model-repair baselines (:mod:`.baselines`) as registered :class:`~.base.ModelDefense` rows.

Each baseline class keeps its options and its ``repair(model, ctx)``; combined with
:class:`ModelDefense`, the runner trains the row's model, repairs the weights it would report and
evaluates the repaired model (``defense: {name: ft, init_args: {epochs: 10}}``).
"""

from __future__ import annotations

from lightning_ssl_backdoor.defenses.base import ModelDefense, register_defense
from lightning_ssl_backdoor.defenses.baselines import (
    AntiBackdoorLearning,
    FinePruning,
    FineTuning,
    ModeConnectivityRepair,
    NeuralAttentionDistillation,
    NeuralCleanse,
    ShrinkPad,
)

__all__ = ["REPAIR_DEFENSES"]

#: defense name -> registered ModelDefense class, one per model-repair baseline
REPAIR_DEFENSES = {
    base.name: register_defense(type(base.__name__, (base, ModelDefense), {"__module__": __name__, "__doc__": base.__doc__}))
    for base in (FineTuning, FinePruning, NeuralAttentionDistillation, ModeConnectivityRepair,
                 AntiBackdoorLearning, NeuralCleanse, ShrinkPad)
}
