"""Every YAML under configs/ is loaded by a test: this file checks the folders and builds each defense."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# folder -> the test that loads and instantiates its files
COVERED = {
    "data": "tests/test_cli.py::test_every_lightning_config_instantiates",
    "ssl": "tests/test_cli.py::test_every_lightning_config_instantiates",
    "trainer": "tests/test_cli.py::test_every_lightning_config_instantiates",
    "experiments": "tests/test_experiment.py::test_experiment_configs_parse",
    "attack": "tests/test_poison_artifacts.py (runs every attack config)",
    "defense": "tests/test_configs.py::test_every_defense_config_builds",
}


def test_every_config_folder_is_covered():
    folders = {p.parent.relative_to(ROOT / "configs").parts[0] for p in (ROOT / "configs").rglob("*.yaml")}
    assert folders <= set(COVERED), f"configs folders without a loading test: {sorted(folders - set(COVERED))}"


@pytest.mark.parametrize("path", sorted((ROOT / "configs/defense").glob("*.yaml")), ids=lambda p: p.name)
def test_every_defense_config_builds(path):
    from lightning_ssl_backdoor.spec import Spec
    from lightning_ssl_backdoor.defenses import Defense, build_defense

    spec = yaml.safe_load(path.read_text())
    defense = build_defense(Spec(name=spec["name"], init_args=spec.get("init_args") or {}))
    assert isinstance(defense, Defense) and defense.name == spec["name"]
