"""The base rate of every attack: its trigger pasted on the test images of the no-attack model.

A backdoor is the *gain* of ASR over what a clean model already does with the trigger pasted: a
4-class model predicts the target for a quarter of anything it has never seen, and a trigger that
looks like the target class moves a clean model too. So the no-attack row of an experiment (attack
``null``, defense ``null``) evaluates its trained model once per attack of the config on that
attack's trigger and target (the attack stage is cached, so this costs one test pass each), and the
report shows these base rates beside the attacked rows.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from lightning_ssl_backdoor.data import PoisonedSplit, SSLSplit
from lightning_ssl_backdoor.defenses import DefenseContext


def attack_base_rates(
    clean: SSLSplit,
    attacked: dict[str, SSLSplit],
    model,
    context: Callable[[SSLSplit], DefenseContext],
) -> dict[str, dict[str, Optional[float]]]:
    """``{attack label: {"asr", "asr_conditioned"}}`` in percent: ``model`` (trained without attack)
    tested on ``clean``'s test set with each attacked split's trigger and target."""
    out: dict[str, dict[str, Optional[float]]] = {}
    for label, split in attacked.items():
        trigger, target = getattr(split, "trigger", None), getattr(split, "target", None)
        if trigger is None or target is None:
            continue
        probe = PoisonedSplit(labeled=clean.labeled, unlabeled=clean.unlabeled, test=clean.test,
                              labeled_indices=clean.labeled_indices, unlabeled_indices=clean.unlabeled_indices,
                              seed=clean.seed, trigger=trigger, target=target)
        ctx = context(probe)
        metrics: dict[str, Any] = ctx.evaluate(model)
        out[label] = {k: (None if metrics.get(m) is None else round(100.0 * metrics[m], 2))
                      for k, m in (("asr", "asr"), ("asr_conditioned", "asr_cond"))}
    return out
