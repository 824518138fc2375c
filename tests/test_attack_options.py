"""Attack options live once, in ``Attack.__init__``: subclasses pass ``*args, **kwargs`` on, and both
``build_attack`` and jsonargparse (``ssl-backdoor poison -c``, LightningCLI) still see every option."""

from __future__ import annotations

import inspect

import pytest
from jsonargparse import ArgumentParser

from lightning_ssl_backdoor.attacks import ATTACKS, Attack, build_attack
from lightning_ssl_backdoor.errors import ConfigError

BASE = {"target", "seed", "budget", "budget_rate", "target_class_rate", "injection", "trigger", "progress"}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_option_is_visible_to_jsonargparse_and_build_attack(name):
    cls = ATTACKS[name]
    options = set(cls.options())
    assert BASE - set(cls.fixed_options) <= options
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "attack")
    seen = set(parser.get_defaults().as_dict()["attack"])
    assert options <= seen and seen - options <= set(cls.fixed_options)
    ns = parser.parse_args(["--attack.target", "2", "--attack.seed", "5"])
    assert ns.attack.target == 2 and ns.attack.seed == 5
    built = build_attack(name, target=2, seed=5)
    assert built.target == 2 and built.seed == 5 and set(built.config()) == options - {"progress"} | {"name"}


def test_subclass_options_are_keyword_and_base_ones_keep_their_order():
    wanet = build_attack("wanet", target=3, budget=7, noise_rate=0.1)
    assert (wanet.target, wanet.budget, wanet.noise_rate) == (3, 7, 0.1)
    with pytest.raises(TypeError):  # options are keyword-only: the published signature says so
        ATTACKS["wanet"](3, 1, 7)
    assert str(inspect.signature(ATTACKS["wanet"])).startswith("(*, ")
    with pytest.raises(ConfigError, match="does not take option"):
        build_attack("interpolation", trigger={"name": "badnets"})
    with pytest.raises(ConfigError, match="no trigger"):
        ATTACKS["interpolation"](trigger={"name": "badnets"})
    with pytest.raises(ConfigError, match="optimises its own trigger"):
        build_attack("narcissus", trigger={"name": "badnets"})
    assert "self" not in Attack.options() and "noise_rate" not in Attack.options()
