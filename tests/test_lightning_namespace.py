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


# ------------------------------------------ the other namespace, named (issue 31, item 6)
def _run(code_or_args, tmp_path, env_var=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != _lightning.ENV_VAR}
    if env_var:
        env[_lightning.ENV_VAR] = env_var
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path), env.get("PYTHONPATH", "")]))
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


LATE = r"""
import sys, warnings
first, *then = sys.argv[1:]
if first != "package":
    __import__(first)
import lightning_ssl_backdoor._lightning as compat
print("NS", compat.NAMESPACE)
for name in then:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        __import__(name)
        __import__(name)  # a second import says nothing more
    found = [str(w.message) for w in caught if w.category is compat.LightningNamespaceWarning]
    print("IMPORT", name, "WARNINGS", len(found))
    for message in found:
        print("MSG", message)
"""


def test_importing_lightning_after_the_package_warns_once_with_the_fix(tmp_path):
    proc = _run(["-c", LATE + r"""
import lightning.pytorch
from lightning_ssl_backdoor.ssl import FixMatch
print("REFUSED", not issubclass(FixMatch, lightning.pytorch.LightningModule))
""", "package", "lightning"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "NS pytorch_lightning" in out and "IMPORT lightning WARNINGS 1" in out and "REFUSED True" in out
    msg = out.split("MSG ", 1)[1].splitlines()[0]
    assert msg.startswith("lightning_ssl_backdoor built its modules on pytorch_lightning")
    assert "import lightning before lightning_ssl_backdoor" in msg and "SSL_BACKDOOR_LIGHTNING=lightning" in msg
    assert "pytorch_lightning.Trainer" in msg and msg.count(". ") == 0  # one sentence


def test_the_right_order_says_nothing_and_the_other_way_round_warns(tmp_path):
    proc = _run(["-c", LATE, "lightning", "lightning.pytorch", "pytorch_lightning"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "NS lightning" in out and "IMPORT lightning.pytorch WARNINGS 0" in out  # lightning first: picked
    assert "IMPORT pytorch_lightning WARNINGS 1" in out  # then the other namespace: named
    assert "SSL_BACKDOOR_LIGHTNING=pytorch_lightning" in out and "train with lightning.Trainer" in out


def test_a_forced_namespace_installs_no_watcher(monkeypatch):
    monkeypatch.setenv(_lightning.ENV_VAR, _lightning.NAMESPACE)  # a decision: nothing to warn about
    assert _lightning._watch_the_other_namespace() is None
    monkeypatch.delenv(_lightning.ENV_VAR)
    other = next(n for n in _lightning.NAMESPACES if n != _lightning.NAMESPACE)
    monkeypatch.setitem(sys.modules, other, sys.modules.get(other, object()))  # already imported: too late
    assert _lightning._watch_the_other_namespace() is None
    watcher = _lightning._LateImportWatcher("no_such_package_xyz")
    sys.meta_path.insert(0, watcher)
    try:
        with pytest.warns(_lightning.LightningNamespaceWarning, match=_lightning.ENV_VAR):
            with pytest.raises(ImportError):
                __import__("no_such_package_xyz")
        assert watcher not in sys.meta_path  # once
    finally:
        watcher.remove()


def test_a_foreign_class_is_named_with_the_fix():
    ours, other = _lightning.NAMESPACE, next(n for n in _lightning.NAMESPACES if n != _lightning.NAMESPACE)
    root = _lightning.NAMESPACES[other]
    Callback = type("Callback", (), {"__module__": f"{root}.callbacks.callback"})  # stands in for the other's
    LightningModule = type("LightningModule", (), {"__module__": f"{root}.core.module"})
    here = sys.modules[__name__]
    here.ForeignCallback = type("ForeignCallback", (Callback,), {"__module__": __name__})
    here.ForeignModule = type("ForeignModule", (LightningModule,), {"__module__": __name__})
    try:
        said = _lightning.foreign_class_in_error(
            f'Parser key "trainer.callbacks": Import path {__name__}.ForeignCallback does not correspond to a '
            "subclass of Callback")
        assert said.startswith(f"{__name__}.ForeignCallback subclasses {root}.callbacks.callback.Callback but "
                               f"ssl-backdoor runs on {ours}")
        assert f"run with SSL_BACKDOOR_LIGHTNING={other}" in said
        said = _lightning.foreign_class_sentence(f"{__name__}.ForeignModule", "SSLModule")
        assert "and not SSLModule: this option takes a subclass of lightning_ssl_backdoor's SSLModule" in said
        assert _lightning.foreign_class_sentence(f"{__name__}.ConfigError", "Callback") is None  # not Lightning
        assert _lightning.foreign_class_sentence("no_such_module.X", "Callback") is None
        assert _lightning.foreign_class_in_error("Import path a.B does not correspond to a subclass of C") is None
    finally:
        del here.ForeignCallback, here.ForeignModule


def test_fit_names_a_callback_from_the_other_namespace_and_the_fix_works(tmp_path):
    (tmp_path / "mycb.py").write_text("import lightning\n\n\nclass PrintLoss(lightning.Callback):\n    pass\n")
    args = ["-m", "lightning_ssl_backdoor.cli", "fit", "-c", str(ROOT / "configs" / "data" / "digits.yaml"),
            "--model", "FixMatch", "--trainer.callbacks+=mycb.PrintLoss", "--print_config"]
    refused = _run(args, tmp_path)  # the rule picks pytorch_lightning; mycb's `import lightning` comes later
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip() == (
        "error: mycb.PrintLoss subclasses lightning.Callback but ssl-backdoor runs on pytorch_lightning, whose "
        "classes are distinct: run with SSL_BACKDOOR_LIGHTNING=lightning, or subclass pytorch_lightning.Callback.")
    fixed = _run(args, tmp_path, env_var="lightning")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert "class_path: mycb.PrintLoss" in fixed.stdout
