"""Both Lightning namespaces: the rule that picks one, and FixMatch trained under each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_ssl_backdoor import _lightning
from lightning_ssl_backdoor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# Trains FixMatch a few steps with the trainer of the namespace named in argv[1], importing that
# namespace before the package (as a user's project would), and prints what ran as JSON.
SCRIPT = r"""
import json, sys
ns = sys.argv[1]
if ns == "lightning":
    import lightning
    Trainer = lightning.Trainer
else:
    import pytorch_lightning
    Trainer = pytorch_lightning.Trainer
import torch
torch.set_num_threads(1)
from lightning_ssl_backdoor._lightning import NAMESPACE
from lightning_ssl_backdoor.data import ImageSet, SSLDataModule, make_split
from lightning_ssl_backdoor.ssl import FixMatch

g = torch.Generator().manual_seed(0)
def images(n):
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
                    torch.arange(n) % 3, ["a", "b", "c"])
split = make_split(images(48), images(12), labels_per_class=4, seed=0)
dm = SSLDataModule(split=split, batch_size=4, mu=2, eval_batch_size=12)
module = FixMatch(arch="tiny_cnn", model_kwargs={"width": 4}, num_classes=3, in_channels=3, weak_pad=1)
before = [p.detach().clone() for p in module.model.parameters()]
trainer = Trainer(max_steps=3, val_check_interval=3, check_val_every_n_epoch=None, accelerator="cpu",
                  logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0)
trainer.fit(module, datamodule=dm)
changed = any(not torch.equal(a, b) for a, b in zip(before, module.model.parameters()))
print("RESULT " + json.dumps({"namespace": NAMESPACE, "steps": trainer.global_step, "changed": changed,
                              "trainer": type(trainer).__module__, "val_acc": "val/acc" in trainer.callback_metrics}))
"""


@pytest.mark.parametrize("namespace", ["lightning", "pytorch_lightning"])
def test_fixmatch_trains_under_each_namespace(namespace, tmp_path):
    env = dict(os.environ, SSL_BACKDOOR_LIGHTNING=namespace, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, namespace], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["namespace"] == namespace
    assert result["trainer"].startswith("lightning.pytorch" if namespace == "lightning" else "pytorch_lightning")
    assert result["steps"] == 3 and result["changed"] and result["val_acc"]


def test_rule_env_var_then_imported_lightning_then_pytorch_lightning(monkeypatch):
    monkeypatch.setenv(_lightning.ENV_VAR, "pytorch_lightning")
    monkeypatch.setitem(sys.modules, "lightning", sys.modules.get("lightning", object()))
    assert _lightning.choose_namespace() == "pytorch_lightning"  # the variable wins
    monkeypatch.setenv(_lightning.ENV_VAR, "lightning")
    assert _lightning.choose_namespace() == "lightning"
    monkeypatch.delenv(_lightning.ENV_VAR)
    assert _lightning.choose_namespace() == "lightning"  # the project imported lightning
    monkeypatch.delitem(sys.modules, "lightning")
    assert _lightning.choose_namespace() == "pytorch_lightning"  # installed, lightning not imported


def test_rule_falls_back_to_lightning_without_pytorch_lightning(monkeypatch):
    monkeypatch.delenv(_lightning.ENV_VAR, raising=False)
    monkeypatch.delitem(sys.modules, "lightning", raising=False)
    monkeypatch.setattr(_lightning, "_installed", lambda name: name == "lightning")
    assert _lightning.choose_namespace() == "lightning"


def test_bad_env_var_is_one_sentence(monkeypatch):
    monkeypatch.setenv(_lightning.ENV_VAR, "lightning.pytorch")
    with pytest.raises(ConfigError, match="SSL_BACKDOOR_LIGHTNING='lightning.pytorch' is not a Lightning namespace"):
        _lightning.choose_namespace()
    monkeypatch.setenv(_lightning.ENV_VAR, "lightning")
    monkeypatch.setattr(_lightning, "_installed", lambda name: False)
    with pytest.raises(ConfigError, match="not installed"):
        _lightning.choose_namespace()


def test_package_uses_one_namespace():
    from lightning_ssl_backdoor.data import SSLDataModule
    from lightning_ssl_backdoor.ssl import SSLModule

    pl = _lightning.pl
    assert issubclass(SSLModule, pl.LightningModule) and issubclass(SSLDataModule, pl.LightningDataModule)
    assert _lightning.LightningCLI.__module__ == f"{pl.__name__}.cli"
    assert issubclass(_lightning.TensorBoardLogger, pl.loggers.Logger)
    assert _lightning.CheckpointIO is pl.plugins.CheckpointIO
    assert issubclass(_lightning.TorchCheckpointIO, pl.plugins.CheckpointIO)


def test_every_lightning_import_goes_through_the_compat_module():
    """A direct ``pytorch_lightning`` / ``lightning`` / ``lightning_fabric`` import anywhere in the
    package, its tests or benchmarks would bind that file to one namespace."""
    import re

    direct = re.compile(r"^\s*(import|from)\s+(pytorch_lightning|lightning|lightning_fabric)([.\s]|$)", re.M)
    offenders = []
    for folder in ("lightning_ssl_backdoor", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name in ("_lightning.py", "test_lightning_namespace.py"):
                continue
            if direct.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"import Lightning from lightning_ssl_backdoor._lightning in {offenders}"
