"""The defense interface below the runner: import direction, registry, and ModelDefense through the
real runner (train -> load -> repair -> evaluate)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.data.readers import load_dataset
from lightning_ssl_backdoor.defenses import DEFENSES, Defense, ModelDefense, build_defense, defense_class, register_defense
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.spec import Spec

PKG = Path(__file__).resolve().parents[1] / "lightning_ssl_backdoor"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_defense_module_imports_the_runner():
    offenders = {
        str(p.relative_to(PKG)): sorted(n for n in _imports(p) if n.startswith("lightning_ssl_backdoor.pipeline"))
        for p in (PKG / "defenses").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_registry_knows_every_shipped_defense_and_refuses_unknown_names():
    assert {"clustering", "dbd", "depud", "influence", "invalidator"} <= set(DEFENSES)
    repair = {"ft", "fp", "nad", "mcr", "abl", "neural_cleanse", "shrinkpad"}  # the model-repair baselines
    assert repair <= set(DEFENSES) and all(issubclass(DEFENSES[n], ModelDefense) for n in repair)
    for name in DEFENSES:
        assert issubclass(defense_class(name), Defense)
    with pytest.raises(ConfigError, match="unknown defense 'nope'; choose one of .*clustering"):
        defense_class("nope")
    with pytest.raises(ConfigError, match="got invalid options"):
        build_defense(Spec("clustering", {"no_such_option": 1}))


@register_defense
class KeepModel(ModelDefense):
    """Repairs nothing: the row must report exactly what the undefended model scores."""

    name = "test_keep_model"

    def repair(self, model: nn.Module, ctx) -> nn.Module:
        return model


@register_defense
class ZeroHead(ModelDefense):
    """Zeroes the classifier's last linear layer: every logit ties, so every image is class 0."""

    name = "test_zero_head"

    def repair(self, model: nn.Module, ctx) -> nn.Module:
        assert len(ctx.split.labeled) > 0  # the defender's data is at hand
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
        ctx.info["zeroed"] = tuple(head.weight.shape)
        return model


def test_model_defense_through_the_runner(tmp_path):
    cfg = {
        "name": "model-defense",
        "seeds": [0],
        "data": {"dataset": "digits", "image_size": 16, "labels_per_class": 3, "batch_size": 8, "mu": 2,
                 "eval_batch_size": 500},
        "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": 0.9},
        "trainer": {"max_steps": 4, "val_check_interval": 4, "checkpoint_every_n_steps": 2, "accelerator": "cpu"},
        "algorithms": ["supervised"],
        "attacks": [{"name": "clean_label", "init_args": {"target": 1, "budget": 10}}],
        "defenses": [None, "test_keep_model", "test_zero_head",
                     {"name": "ft", "init_args": {"epochs": 1, "batch_size": 10}}],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    rows = {r["defense"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    plain, keep, zero = rows[None], rows["test_keep_model"], rows["test_zero_head"]
    # load_model + evaluate reproduce the runner's own numbers for the unchanged (EMA) model
    assert keep["clean_accuracy"] == plain["clean_accuracy"] and keep["asr"] == plain["asr"]
    assert keep["defense_info"]["repaired_weights"] == "ema"
    assert keep["defense_info"]["before"]["acc_ema"] == pytest.approx(plain["clean_accuracy"] / 100, abs=1e-4)
    # a zeroed head predicts class 0 everywhere: CA is class 0's share of the test set, ASR (target 1) is 0
    labels = load_dataset("digits", "test", image_size=16).labels
    assert zero["clean_accuracy"] == round(100.0 * float((labels == 0).float().mean()), 2)
    assert zero["asr"] == 0.0 and zero["defense_info"]["zeroed"] == [10, 32]
    assert zero["steps"] == keep["steps"] == 4 and zero["history"]
    ft = rows["ft"]  # a baseline through the same path: trained once, fine-tuned on the labeled set
    assert ft["defense_info"]["before"]["acc_ema"] == keep["defense_info"]["before"]["acc_ema"]
    assert 0 <= ft["clean_accuracy"] <= 100 and ft["defense_info"]["repair_seconds"] >= 0
    # repaired rows are cached: a rerun neither trains nor repairs again
    ZeroHead.repair = lambda self, model, ctx: pytest.fail("repaired again")  # type: ignore[method-assign]
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
