"""Issue 34's general rule, generated rather than listed: every field of every config block given a
value of the wrong type, a non-finite number or (for counts) a negative one stops the run before
any work with exit code 2 and one line, no traceback.

The fields come from the signatures (the experiment's dataclasses, every registered algorithm,
attack and defense, the surrogate's options), so a new component or option is covered without
touching this file.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from lightning_ssl_backdoor.attacks.registry import ATTACKS
from lightning_ssl_backdoor.attacks.surrogate import surrogate_parameters
from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.defenses.base import DEFENSES
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.build import LINKED, check_buildable, config_from_dict
from lightning_ssl_backdoor.pipeline.config import ExperimentConfig
from lightning_ssl_backdoor.signatures import keyword_parameters
from lightning_ssl_backdoor.spec import DataConfig, TrainerConfig
from lightning_ssl_backdoor.ssl import ALGORITHMS


def _base(t):
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if typing.get_origin(t) is typing.Union and len(args) == 1 else t


def bad_values(annotation) -> list:
    """Values the option must refuse: a wrong type, and for floats a non-finite number."""
    t = _base(annotation)
    if t in (bool, int):
        return ["abc"]
    if t is float:
        return ["abc", float("nan"), float("inf")]
    if t is str:
        return [{"not": "a string"}]
    if typing.get_origin(t) is list and typing.get_args(t) and typing.get_args(t)[0] in (int, float):
        return ["abc"]
    return []


def _cases():
    blocks = {"algorithm": {}, "surrogate": surrogate_parameters()}
    for name, cls in ALGORITHMS.items():
        for k, p in keyword_parameters(cls, LINKED).items():
            blocks["algorithm"].setdefault(k, (name, p))
    for k, (name, p) in blocks["algorithm"].items():
        for v in bad_values(p.annotation):
            yield "model", name, k, v
    for k, p in blocks["surrogate"].items():
        for v in bad_values(p.annotation):
            yield "surrogate", None, k, v
    for name, cls in ATTACKS.items():
        for k, p in cls.options().items():
            for v in bad_values(p.annotation):
                yield "attacks", name, k, v
    for name, cls in DEFENSES.items():
        if not cls.__module__.startswith("lightning_ssl_backdoor."):
            continue  # a stand-in another test registered in this process
        for k, p in keyword_parameters(cls).items():
            for v in bad_values(p.annotation):
                yield "defenses", name, k, v


CASES = list(_cases())


def test_the_rule_covers_every_block():
    assert {c[0] for c in CASES} == {"model", "surrogate", "attacks", "defenses"}
    assert len({(c[0], c[1]) for c in CASES if c[0] in ("attacks", "defenses")}) >= len(ATTACKS) + len(DEFENSES) - 4
    assert len(CASES) > 300


def test_every_component_option_refuses_a_bad_value_in_one_sentence():
    """The typed path of ``experiment`` after jsonargparse (config_from_dict + check_buildable),
    once per generated case: a one-line ConfigError naming the option."""
    missed = []
    for block, name, key, value in CASES:
        if block == "model":
            d = {"algorithms": [name], "model": {key: value}}
        elif block == "surrogate":
            d = {"surrogate": {key: value}}
        else:
            d = {block: [{"name": name, "init_args": {key: value}}]}
        try:
            check_buildable(config_from_dict(d))
        except ConfigError as e:
            text = str(e)
            if "\n" in text or key not in text:
                missed.append((block, name, key, value, text))
            continue
        missed.append((block, name, key, value, "accepted"))
    assert not missed, missed[:10]


def _dataclass_cases():
    for block, cls in (("data", DataConfig), ("trainer", TrainerConfig), (None, ExperimentConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if dataclasses.is_dataclass(t) or f.name in ("model", "surrogate", "output", "name"):
                continue
            opt = f"--{block}.{f.name}" if block else f"--{f.name}"
            values = [v for v in bad_values(t) if isinstance(v, str)]
            if _base(t) is int or (typing.get_origin(_base(t)) is list and typing.get_args(_base(t))[0] is int):
                values.append("[-1]" if typing.get_origin(_base(t)) is list else "-1")
            for v in values:
                yield opt, v


DATACLASS_CASES = list(_dataclass_cases())


@pytest.mark.parametrize("opt, value", DATACLASS_CASES, ids=[f"{o}={v}" for o, v in DATACLASS_CASES])
def test_every_experiment_field_refuses_a_bad_value_with_exit_2(opt, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", opt, value, "--trainer.max_steps", "1"] if opt != "--trainer.max_steps"
                else ["experiment", opt, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert opt.lstrip("-").split(".")[-1] in err[0], err[0]
    assert not (tmp_path / "runs").exists()  # nothing was created
