"""Bad inputs and faults (issue 17): one sentence on stderr, a documented exit code, nothing
half-written, no lost run. Numbers in the test names refer to the issue's cases."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning_ssl_backdoor._lightning import Callback

import lightning_ssl_backdoor.pipeline.training as training
from lightning_ssl_backdoor import checkpoint_io, faults
from lightning_ssl_backdoor.attacks import build_attack
from lightning_ssl_backdoor.attacks.cli import poison_main
from lightning_ssl_backdoor.data.poisoned_io import save_poisoned_split
from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.data.artifacts import MANIFEST_MEMBER, load_arrays, save_arrays
from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.data.split import make_split
from lightning_ssl_backdoor.error_boundary import classify
from lightning_ssl_backdoor.errors import ArtifactError, CheckpointError, DataFormatError, OutputLockedError
from lightning_ssl_backdoor.io_lock import acquire, lock_path, locked_output
from lightning_ssl_backdoor.pipeline.config import DataConfig, Spec, TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = ["-c", str(ROOT / "configs/data/digits.yaml"), "-c", str(ROOT / "configs/ssl/fixmatch_small.yaml"),
             "--data.image_size", "8", "--data.mu", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.callbacks", "null"]
SMALL = {
    "name": "small", "seeds": [0],
    "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 2, "batch_size": 4, "mu": 1,
             "eval_batch_size": 500},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 4}},
    "trainer": {"max_steps": 2, "val_check_interval": 2, "checkpoint_every_n_steps": 1, "accelerator": "cpu"},
    "algorithms": ["supervised"],
}


def _cfg(tmp_path: Path, **changes) -> str:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({**SMALL, **changes}))
    return str(p)


def _one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(err)
    assert err and err[-1].startswith("error: "), err
    return err[-1]


# ------------------------------------------------------------- configs (1, 2, 16, 17, 18)
def test_01_attack_entry_without_name(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["experiment", "-c", _cfg(tmp_path), "--attacks", "[{init_args: {target: 0}}]",
                 "--output", str(out)]) == 2
    assert "needs a name" in _one_error(capsys)


@pytest.mark.parametrize("cmd", ["fit", "experiment"])
def test_02_absurd_image_size_is_refused_before_allocating(tmp_path, capsys, cmd):
    args = (["fit"] + LIGHTNING if cmd == "fit" else ["experiment", "-c", _cfg(tmp_path), "--output", str(tmp_path / "o")])
    assert main(args + ["--data.image_size", "100000"]) == 2
    assert "larger than 1024 px" in _one_error(capsys)


@pytest.mark.parametrize("names", ["[os.system]", "[os.path.join]", "[lightning_ssl_backdoor.errors.ConfigError]"])
def test_16_dotted_names_in_configs_never_import_or_call(tmp_path, capsys, monkeypatch, names):
    import importlib

    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda n, *a: called.append(n) if not n.startswith("lightning_ssl_backdoor") else real(n, *a))
    assert main(["experiment", "-c", _cfg(tmp_path), "--algorithms", names, "--output", str(tmp_path / "o")]) == 2
    assert "unknown algorithm" in _one_error(capsys) and not called


def test_16_attack_class_path_resolves_only_registered_attacks(tmp_path, capsys):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("data: {name: digits, image_size: 8, labels_per_class: 3}\n"
                   f"attack: {{class_path: os.system, init_args: {{}}}}\noutput: {tmp_path / 'm.npz'}\n")
    assert poison_main(["-c", str(cfg)]) == 2
    assert "unknown attack class_path 'os.system'" in _one_error(capsys)


@pytest.mark.parametrize("arg, words", [
    (["--model.init_args.threshold", "1.5"], "threshold must be in [0, 1]"),
    (["--model.init_args.arch", "resnet9000"], "Unknown model architecture 'resnet9000'"),
    (["--model.init_args.threshold", "x"], "model.threshold must be float, got 'x'"),
    (["--data.nosuch", "1"], "unrecognized arguments"),
    (["-c", "/no/such.yaml"], "does not exist"),
])
def test_17_18_lightning_validation_errors_are_their_root_cause(capsys, arg, words):
    assert main(["fit"] + LIGHTNING + arg) == 2
    line = _one_error(capsys)
    assert words in line and "Union" not in line and "Namespace" not in line


def test_poison_print_config_exits_0(capsys):
    assert poison_main(["--attack", "{name: mosaic}", "--print_config"]) == 0
    assert "attack:" in capsys.readouterr().out


def test_lightning_cli_gives_no_args_warning(tmp_path, monkeypatch, recwarn):
    monkeypatch.setattr(sys, "argv", ["ssl-backdoor", "fit"] + LIGHTNING + ["--print_config"])
    assert main() == 0
    assert not [w for w in recwarn if "args parameter" in str(w.message)]


# ------------------------------------------------------------------- data (3, 4, 7, 8)
@pytest.fixture(scope="module")
def artifact8(tmp_path_factory):
    from lightning_ssl_backdoor.data.readers import load_dataset

    train, test = load_dataset("digits", "train", image_size=8), load_dataset("digits", "test", image_size=8)
    split = make_split(train, test, labels_per_class=2, seed=0, num_unlabeled=60)
    path = tmp_path_factory.mktemp("art") / "p8.npz"
    return save_poisoned_split(path, build_attack("mosaic", target=2, budget=2).poison(split))


def test_03_poisoned_artifact_with_another_image_size_is_refused(artifact8, capsys):
    assert main(["fit"] + LIGHTNING + ["--data.poisoned_split", str(artifact8), "--data.image_size", "16",
                                       "--trainer.max_steps", "1"]) == 2
    assert "was made with images of side 8 but data.image_size is 16" in _one_error(capsys)


def test_04_train_and_test_class_folders_must_match():
    def imgs(classes):
        return ImageSet(images=torch.zeros(4, 3, 4, 4, dtype=torch.uint8), labels=torch.tensor([0, 0, 1, 1]),
                        classes=classes)

    with pytest.raises(DataFormatError, match=r"test set's classes \['b', 'c'\] differ"):
        make_split(imgs(["a", "b"]), imgs(["b", "c"]), labels_per_class=1, seed=0)


def test_04_image_folders_end_to_end(tmp_path):
    from PIL import Image

    from lightning_ssl_backdoor.data.readers import load_dataset

    for split, classes in (("train", "ab"), ("test", "bc")):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (4, 4), (i * 50, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    train, test = (load_dataset("folder", s, root=str(tmp_path)) for s in ("train", "test"))
    with pytest.raises(DataFormatError, match="same sub-folders"):
        make_split(train, test, labels_per_class=1, seed=0)


def test_07_surrogate_without_config_metadata(tmp_path):
    from safetensors.torch import save_file

    from lightning_ssl_backdoor.attacks.surrogate import SURROGATE_FORMAT, load_surrogate

    path = tmp_path / "s.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": SURROGATE_FORMAT})
    with pytest.raises(ArtifactError, match=r"malformed \(missing entry 'config'\)"):
        load_surrogate(path)


def test_08_manifest_naming_a_missing_array(tmp_path):
    import zipfile

    p = save_arrays(tmp_path / "a.npz", {"x": np.arange(3), "y": np.ones(2)}, {"k": 1})
    with zipfile.ZipFile(p) as z:  # an archive whose manifest lists y but that lacks it
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(p, "w") as z:
        for n, b in members.items():
            if n != "y.npy":
                z.writestr(n, b)
    with pytest.raises(ArtifactError, match="archive was modified"):
        load_arrays(p)
    # the same with a manifest beside the archive (artifacts written before manifests moved inside)
    legacy = tmp_path / "b.npz"
    np.savez(legacy, x=np.arange(3))
    (tmp_path / "b.json").write_text(json.dumps({"meta": {}, "arrays": {
        "x": {"sha256": "0"}, "y": {"sha256": "0"}}}))
    with pytest.raises(ArtifactError, match=r"missing \['y'\]"):
        load_arrays(legacy)


def test_artifact_is_one_file_and_refused_without_its_manifest(tmp_path):
    p = save_arrays(tmp_path / "a.npz", {"x": np.arange(3)}, {"k": 1})
    assert MANIFEST_MEMBER in np.load(p).files
    p.with_suffix(".json").unlink()  # the readable copy is optional
    assert load_arrays(p)[1] == {"k": 1}
    np.savez(p, x=np.arange(3))  # an array file without any manifest
    with pytest.raises(ArtifactError, match="holds no manifest"):
        load_arrays(p)


def test_artifact_copy_beside_it_must_agree(tmp_path):
    p = save_arrays(tmp_path / "a.npz", {"x": np.arange(3)}, {"k": 1})
    side = p.with_suffix(".json")
    side.write_text(side.read_text().replace('"k": 1', '"k": 2'))
    with pytest.raises(ArtifactError, match="differs from the manifest inside"):
        load_arrays(p)


# ---------------------------------------------------------- output paths (9-12, 13, 19)
@pytest.mark.parametrize("cmd", ["experiment", "poison"])
def test_09_10_output_is_an_existing_file(tmp_path, capsys, cmd):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    if cmd == "experiment":
        named = tmp_path / "report.md"  # a file with a suffix too: refused before any work starts
        named.write_text("x")
        cfg = _cfg(tmp_path)
        before = set(tmp_path.rglob("*"))
        assert main(["experiment", "-c", cfg, "--output", str(named)]) == 2
        assert str(named) in _one_error(capsys) and set(tmp_path.rglob("*")) == before
        rc = main(["experiment", "-c", _cfg(tmp_path), "--output", str(blocker)])
    else:
        rc = poison_main(["--attack", "{name: mosaic, budget: 2}", "--data.image_size", "8",
                          "--data.labels_per_class", "2", "--output", str(blocker / "p.npz")])
    assert rc == 2
    assert str(blocker) in _one_error(capsys)


def test_11_12_unwritable_output_is_exit_1(tmp_path, capsys, monkeypatch):
    import lightning_ssl_backdoor.io_lock as io_lock

    def denied(target):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr(io_lock, "acquire", denied)
    assert main(["experiment", "-c", _cfg(tmp_path), "--output", str(tmp_path / "ro")]) == 1
    assert "permission denied" in _one_error(capsys)
    code, sentence = classify(OSError(errno.EROFS, "Read-only file system", "/x"))
    assert code == 1 and "/x" in sentence


def test_13_disk_full_during_poison_leaves_nothing(tmp_path, capsys, monkeypatch):
    import lightning_ssl_backdoor.data.artifacts as artifacts

    real = artifacts.atomic_write

    def full(path, write, mode="wb"):
        if str(path).endswith("p.npz"):
            def failing(fh):
                fh.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, failing, mode)
        return real(path, write, mode)

    monkeypatch.setattr(artifacts, "atomic_write", full)
    out = tmp_path / "out" / "p.npz"
    assert poison_main(["--attack", "{name: mosaic, budget: 2}", "--data.image_size", "8",
                        "--data.labels_per_class", "2", "--output", str(out), "--progress", "false"]) == 1
    assert "no space left" in _one_error(capsys)
    left = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert left == [], left  # no archive, no manifest, no temp file, no empty work folder, no lock


def test_19_second_run_on_a_locked_output(tmp_path, capsys):
    out = tmp_path / "o"
    with locked_output(out):
        assert main(["experiment", "-c", _cfg(tmp_path), "--output", str(out)]) == 1
    assert f"pid {os.getpid()}" in _one_error(capsys)
    assert not lock_path(out).exists()  # released at exit


def test_19_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "o"
    out.mkdir()
    import socket

    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    path = acquire(out)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(OutputLockedError, match="being written by another run"):
        acquire(out)


# ---------------------------------------------------------- checkpoints (5, 6, 14, 15)
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/ssl_backdoor_pwned",))


def test_05_pickled_object_in_a_checkpoint_runs_nothing(tmp_path, capsys):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, ckpt)
    assert main(["test"] + LIGHTNING + ["--ckpt_path", str(ckpt)]) == 2
    line = _one_error(capsys)
    assert "pickled Python objects" in line and "weights_only=False" not in line
    assert not Path("/tmp/ssl_backdoor_pwned").exists()


def _row(tmp_path, name, callbacks=None, max_steps=4):
    from lightning_ssl_backdoor.data.readers import load_dataset

    train, test = load_dataset("digits", "train", image_size=8), load_dataset("digits", "test", image_size=8)
    split = make_split(train, test, labels_per_class=2, seed=0, num_unlabeled=40)
    data = DataConfig(**{**SMALL["data"], "image_size": 8})
    trainer = TrainerConfig(max_steps=max_steps, val_check_interval=2, checkpoint_every_n_steps=1, accelerator="cpu")
    return training.train_row(split, Spec("fixmatch", {"threshold": 0.5}), SMALL["model"], data, trainer, 0,
                              tmp_path / name, enable_progress_bar=False, extra_callbacks=callbacks)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *a):
        if trainer.global_step == self.step:
            raise RuntimeError("stopped")


def test_06_pickled_cached_last_ckpt_is_refused(tmp_path):
    ckpts = tmp_path / "r" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"state_dict": {}, "x": Evil()}, ckpts / "last.ckpt")
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        _row(tmp_path, "r")
    assert not Path("/tmp/ssl_backdoor_pwned").exists()


def test_14_disk_full_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    io = checkpoint_io.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, path)
    good = path.read_bytes()

    def full(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "global_step": 2}, path)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    code, sentence = classify(OSError(errno.ENOSPC, "No space left on device", str(path)))
    assert code == 1 and "free space and rerun" in sentence


def test_15_truncated_last_ckpt_is_set_aside_and_the_run_resumes(tmp_path):
    full = _row(tmp_path, "a")
    with pytest.raises(RuntimeError, match="stopped"):
        _row(tmp_path, "b", [StopAt(3)])
    ckpts = tmp_path / "b" / "checkpoints"
    last = ckpts / "last.ckpt"
    assert (ckpts / "last.ckpt.prev").is_file()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a truncated write
    with pytest.warns(UserWarning, match="truncated or corrupted"):
        resumed = _row(tmp_path, "b")
    assert resumed["steps"] == 4 and resumed["test"] == pytest.approx(full["test"], abs=1e-6)
    assert (ckpts / "last.ckpt.corrupt-0").is_file()


def test_15_no_usable_checkpoint_starts_from_scratch_with_a_warning(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"PK garbage")
    with pytest.warns(UserWarning, match="starts from step 0"):
        assert checkpoint_io.resume_checkpoint(ckpts) is None


# ------------------------------------------------------------------ Ctrl-C (20, minor)
class SigintAt(Callback):
    """Sends this process ``signum`` (SIGINT, a Ctrl-C) at the end of training step ``step``."""

    signum = signal.SIGINT

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *a):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_20_fit_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, capsys):
    args = LIGHTNING[:-2] + ["--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "4",
                             "--trainer.val_check_interval", "2", "--trainer.logger", "false"]
    cb = ["--trainer.callbacks+", "tests.test_harden.SigintAt", "--trainer.callbacks.init_args.step", "2"]
    assert main(["fit"] + args + cb) == 130
    err = capsys.readouterr().err
    saved = err.split("--ckpt_path ")[-1].split("`")[0]
    assert "interrupted: saved" in err and Path(saved).is_file()
    assert torch.load(saved, weights_only=True)["global_step"] == 2
    assert main(["fit"] + args + ["--ckpt_path", saved]) == 0
    assert torch.load(saved, weights_only=True)["global_step"] == 2  # the resume point is untouched


def test_20_experiment_ctrl_c_with_one_job_exits_130_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    monkeypatch.setattr(faults, "training_hooks", lambda: [SigintAt(1)])
    assert main(["experiment", "-c", _cfg(tmp_path), "--output", str(out), "--no_progress", "true"]) == 130
    err = capsys.readouterr().err
    assert "interrupted:" in err and "again to resume" in err and not lock_path(out).exists()
    assert list(out.glob("cache/train-*/checkpoints/last.ckpt"))
    monkeypatch.setattr(faults, "training_hooks", lambda: [])
    assert main(["experiment", "-c", _cfg(tmp_path), "--output", str(out), "--no_progress", "true"]) == 0
    assert json.loads((out / "results.json").read_text())["rows"][0]["steps"] == 2


def test_only_merges_into_results_json(tmp_path):
    out = tmp_path / "o"
    cfg = _cfg(tmp_path, seeds=[0, 1], trainer={**SMALL["trainer"], "max_steps": 1, "val_check_interval": 1})
    assert main(["experiment", "-c", cfg, "--output", str(out), "--only", "[1]", "--no_progress", "true"]) == 0
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["rows"]] == [1]
    assert main(["experiment", "-c", cfg, "--output", str(out), "--only", "[0]", "--no_progress", "true"]) == 0
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["rows"]] == [0, 1]


def test_failed_start_leaves_no_tb_folder(tmp_path, capsys):
    out = tmp_path / "o"
    algo = "[{name: fixmatch, init_args: {threshold: 0.5}}]"
    assert main(["experiment", "-c", _cfg(tmp_path), "--output", str(out), "--data.mu", "0",
                 "--algorithms", algo, "--no_progress", "true"]) == 2
    assert "data.mu >= 1" in _one_error(capsys)
    assert not list(out.rglob("tb")) and not list(out.glob("cache/train-*"))


def test_bad_only_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["experiment", "-c", _cfg(tmp_path), "--output", str(out), "--only", "[99]"]) == 2
    assert "rows 0..0" in _one_error(capsys) and not out.exists()
