"""Hardening, second round (issue 34): bounded reads, training that diverges stops, self-healing
caches, confined output, SIGTERM as Ctrl-C, trainer options and ranges checked up front. Every bad
input is exit 2 (or the stated code) with one line, no traceback, and nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.error_boundary import classify
from lightning_ssl_backdoor.errors import ArtifactError, ConfigError, DataFormatError, TrainingDiverged
from tests.test_harden import SMALL, _cfg, _one_error  # the shared tiny experiment and its error check


class _Alarm:
    """Fail (instead of hanging for ever) when the body runs longer than ``seconds``."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self):
        def fire(*_):
            raise TimeoutError(f"hung for more than {self.seconds} s")

        self.previous = signal.signal(signal.SIGALRM, fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


# ------------------------------------------------------------------------- bounded reads
def _bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nname: *l{levels - 1}\n"


@pytest.mark.parametrize("doc, words", [(_bomb(), "more than 100,000 nodes"), ("name: &x [1, *x]\n", "recursive")])
def test_yaml_alias_bomb_in_a_config_is_refused_fast(tmp_path, capsys, doc, words):
    path = tmp_path / "bomb.yaml"
    path.write_text(doc)
    t0 = time.perf_counter()
    assert main(["experiment", "-c", str(path), "--output", str(tmp_path / "o")]) == 2
    assert words in _one_error(capsys) and time.perf_counter() - t0 < 30
    assert not (tmp_path / "o").exists()


def test_yaml_alias_bomb_on_the_command_line_is_refused(tmp_path, capsys):
    # block options (--model.*) are read by typed_options._yaml: it must load with safe_yaml.safe_load
    value = "{a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], b: &b [" + ", ".join(["*a"] * 10) + "], c: &c [" + \
        ", ".join(["*b"] * 10) + "], d: &d [" + ", ".join(["*c"] * 10) + "], e: [" + ", ".join(["*d"] * 10) + "]}"
    assert main(["experiment", "-c", _cfg(tmp_path), "--model.model_kwargs", value, "--output", str(tmp_path / "o")]) == 2
    assert "more than 100,000 nodes" in _one_error(capsys)


def test_expanded_size_counts_aliases_as_expanded():
    from lightning_ssl_backdoor.safe_yaml import expanded_size, safe_load

    doc = "a: &a [1, 2]\nb: [*a, *a, {k: *a}]\n"
    node = yaml.compose(doc)

    def brute(x):  # the constructed (shared) structure, walked with every reference expanded
        if isinstance(x, dict):
            return 1 + sum(brute(k) + brute(v) for k, v in x.items())
        if isinstance(x, list):
            return 1 + sum(brute(v) for v in x)
        return 1

    assert expanded_size(node) == brute(yaml.safe_load(doc)) == 18
    assert safe_load(doc) == yaml.safe_load(doc)
    with pytest.raises(ConfigError, match="more than 17 nodes"):
        expanded_size(node, budget=17)


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c in "ab":
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (4, 4), (i * 60, 0, 0)).save(root / split / c / f"{i}.png")
    return root


def _folder_args(tmp_path: Path, root: Path) -> list[str]:
    return ["experiment", "-c", _cfg(tmp_path), "--data.dataset", "folder", "--data.root", str(root),
            "--data.labels_per_class", "1", "--data.cache_dir", str(tmp_path / "decoded"),
            "--output", str(tmp_path / "o")]


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_data_folder_with_a_fifo_or_a_device_is_refused_not_read(tmp_path, capsys, kind):
    root = _image_folder(tmp_path / "data")
    odd = root / "train" / "a" / "2.png"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/zero")
    with _Alarm(60):
        assert main(_folder_args(tmp_path, root)) == 2
    line = _one_error(capsys)
    assert str(odd) in line and ("named pipe" if kind == "fifo" else "device (through a symbolic link)") in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "decoded").exists()


def test_open_regular_refuses_without_blocking(tmp_path):
    from lightning_ssl_backdoor.data.cache import _sha256_file
    from lightning_ssl_backdoor.data.readers_common import open_regular

    os.mkfifo(tmp_path / "p")
    with _Alarm(20):
        for path in (tmp_path / "p", Path("/dev/zero"), tmp_path):
            with pytest.raises(DataFormatError, match="not a regular file"):
                _sha256_file(path)
    with open_regular(__file__) as fh:  # a regular file opens as usual
        assert fh.read(3)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data: a decompression bomb's start)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [5000, 100_000])
def test_image_above_the_pixel_budget_is_refused_with_its_name(tmp_path, capsys, side):
    root = _image_folder(tmp_path / "data")
    big = root / "train" / "b" / "1.png"
    big.write_bytes(_png_header(side, side))
    assert main(_folder_args(tmp_path, root)) == 2
    line = _one_error(capsys)
    assert str(big) in line and "16,777,216" in line


def test_truncated_archive_is_refused_with_its_name(tmp_path, capsys):
    src = _image_folder(tmp_path / "src")
    packed = tmp_path / "train.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(src / split, arcname=f"cifar10/{split}")
    (tmp_path / "arch").mkdir()
    cut = tmp_path / "arch" / "train.tar.gz"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    args = _folder_args(tmp_path, tmp_path / "arch")
    args[args.index("folder")] = "cifar10"
    assert main(args) == 2
    line = _one_error(capsys)
    assert str(cut) in line and "truncated or corrupted" in line


# ------------------------------------------------------------------- training diverges
def test_diverging_loss_stops_the_run_naming_the_step_and_writes_no_row(tmp_path, capsys):
    out = tmp_path / "o"
    # checked at each checkpoint here (log_every_n_steps is larger than the run)
    cfg = _cfg(tmp_path, trainer={**SMALL["trainer"], "max_steps": 6, "val_check_interval": 6, "log_every_n_steps": 50})
    assert main(["experiment", "-c", cfg, "--model.lr", "1e30", "--output", str(out), "--no_progress", "true"]) == 2
    line = _one_error(capsys)
    assert "training diverged" in line and "from step" in line and "learning rate 1e+30" in line
    assert not (out / "results.json").exists() and not list(out.rglob("metrics.json"))
    for ckpt in out.glob("cache/train-*/checkpoints/last.ckpt*"):  # every resume point has finite weights
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


class _Trainer:
    global_step, log_every_n_steps, max_steps, optimizers = 0, 3, 9, []


def test_divergence_guard_stops_only_on_a_lasting_non_finite_loss():
    from lightning_ssl_backdoor.ssl.divergence import DivergenceGuard

    guard, t = DivergenceGuard(), _Trainer()
    for step, loss in enumerate([1.0, float("inf"), 2.0, float("nan"), float("nan"), float("nan")], start=1):
        t.global_step = step
        if step < 6:  # a single overflow (step 2) is skipped as mixed precision's scaler does
            guard.on_train_batch_end(t, None, {"loss": torch.tensor(loss)}, None, 0)
    with pytest.raises(TrainingDiverged, match=r"loss is NaN from step 4 on \(of 9; learning rate unknown\)"):
        guard.on_train_batch_end(t, None, {"loss": torch.tensor(float("nan"))}, None, 0)


def test_results_never_hold_nan():
    from lightning_ssl_backdoor.pipeline.finite import finite_numbers

    row = {"asr": float("nan"), "ca": 91.5, "h": [{"acc": float("inf"), "step": 2}], "n": np.float32("nan"), "s": "nan"}
    clean = finite_numbers(row)
    assert clean == {"asr": None, "ca": 91.5, "h": [{"acc": None, "step": 2}], "n": None, "s": "nan"}
    json.dumps(clean, allow_nan=False)


def test_artifact_with_test_labels_out_of_range_is_refused(tmp_path):
    from lightning_ssl_backdoor.attacks import build_attack
    from lightning_ssl_backdoor.data.poisoned_io import load_poisoned_split, save_poisoned_split
    from lightning_ssl_backdoor.data.readers import load_dataset
    from lightning_ssl_backdoor.data.split import make_split

    train, test = load_dataset("digits", "train", image_size=8), load_dataset("digits", "test", image_size=8)
    split = build_attack("mosaic", target=2, budget=2).poison(
        make_split(train, test, labels_per_class=2, seed=0, num_unlabeled=60))
    split.test.labels[:3] = -4  # a label no class has: every such image would score as wrong
    path = save_poisoned_split(tmp_path / "p.npz", split)
    with pytest.raises(ArtifactError, match=r"p.npz: test labels lie in \[-4, 9\], outside 0..9") as e:
        load_poisoned_split(path)
    assert classify(e.value)[0] == 2


# ------------------------------------------------------------------- self-healing caches
def test_decode_cache_with_a_list_manifest_is_set_aside_and_rebuilt(tmp_path):
    from lightning_ssl_backdoor.data.cache import cached_load
    from lightning_ssl_backdoor.data.imageset import ImageSet

    src = tmp_path / "src.bin"
    src.write_bytes(b"data")
    data = ImageSet(images=torch.zeros(2, 1, 2, 2, dtype=torch.uint8), labels=torch.tensor([0, 1]), classes=["a", "b"])
    cached_load(lambda: data, src, tmp_path / "c", dataset="x", split="train")
    (entry,) = (tmp_path / "c").glob("*.npz")
    np.savez(entry, manifest=np.asarray(json.dumps([1, 2])), images=np.zeros((2, 1, 2, 2), np.uint8),
             labels=np.array([0, 1]), classes=np.array(["a", "b"]))
    with pytest.warns(UserWarning, match=f"cache entry {entry} is unusable.*set aside as {entry.name}.corrupt-0"):
        again = cached_load(lambda: data, src, tmp_path / "c", dataset="x", split="train")
    assert torch.equal(again.images, data.images) and (entry.parent / f"{entry.name}.corrupt-0").is_file()
    assert cached_load(lambda: 1 / 0, src, tmp_path / "c", dataset="x", split="train").classes == ["a", "b"]


def test_truncated_metrics_json_of_a_row_is_set_aside_and_rebuilt(tmp_path, recwarn):
    out = tmp_path / "o"
    cfg = _cfg(tmp_path)
    assert main(["experiment", "-c", cfg, "--output", str(out), "--no_progress", "true"]) == 0
    want = json.loads((out / "results.json").read_text())["rows"][0]
    (metrics,) = out.glob("cache/train-*/metrics.json")
    metrics.write_text(metrics.read_text()[:40])
    assert main(["experiment", "-c", cfg, "--output", str(out), "--no_progress", "true"]) == 0
    assert any(f"cache entry {metrics} is unusable" in str(w.message) for w in recwarn)
    got = json.loads((out / "results.json").read_text())["rows"][0]
    assert got["clean_accuracy"] == want["clean_accuracy"] and (metrics.parent / "metrics.json.corrupt-0").is_file()


def test_damaged_attack_stage_entry_is_rebuilt(tmp_path):
    from lightning_ssl_backdoor.data.readers import load_dataset
    from lightning_ssl_backdoor.data.split import make_split
    from lightning_ssl_backdoor.pipeline.attack_stage import run_attack_stage
    from lightning_ssl_backdoor.spec import Spec

    train, test = load_dataset("digits", "train", image_size=8), load_dataset("digits", "test", image_size=8)
    split = make_split(train, test, labels_per_class=2, seed=0, num_unlabeled=60)
    stage = tmp_path / "attack-x"
    stage.mkdir()
    (stage / "poisoned.npz").write_bytes(b"PK\x03\x04 truncated")
    (stage / "poisoned.json").write_text("{}")
    with pytest.warns(UserWarning, match="poisoned.npz is unusable"):
        poisoned = run_attack_stage(split, Spec("mosaic", {"target": 1, "budget": 2}), {}, 0, stage, tmp_path / "s",
                                    progress=False)
    assert int(poisoned.unlabeled_poison_mask.sum()) == 2 and (stage / "poisoned.npz.corrupt-0").is_file()


def test_damaged_cached_surrogate_is_retrained(tmp_path):
    from lightning_ssl_backdoor.data.readers import load_dataset
    from lightning_ssl_backdoor.data.split import make_split
    from lightning_ssl_backdoor.pipeline.attack_stage import surrogate_model

    train, test = load_dataset("digits", "train", image_size=8), load_dataset("digits", "test", image_size=8)
    split = make_split(train, test, labels_per_class=2, seed=0, num_unlabeled=20)
    (tmp_path / "surrogate.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.warns(UserWarning, match="surrogate.safetensors is unusable"):
        model = surrogate_model(split, {"steps": 2, "batch_size": 4, "model_kwargs": {"width": 4}}, 0, tmp_path, False)
    assert model is not None and (tmp_path / "surrogate.safetensors.corrupt-0").is_file()
    surrogate_model(split, {"steps": 2, "batch_size": 4, "model_kwargs": {"width": 4}}, 0, tmp_path, False)  # cached


# ------------------------------------------------------------------------ confined output
@pytest.mark.parametrize("name", ["../../x", "/tmp/abs_name", "a/b", "..", ".hidden", ""])
def test_experiment_name_is_a_slug(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "-c", _cfg(tmp_path), "--name", name]) == 2
    assert "is not a plain name" in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


# ---------------------------------------------------------------- trainer options, ranges
@pytest.mark.parametrize("arg, words", [
    (["--seeds", "[-1]"], "0 <= seed < 2**32"),
    (["--seeds", "[4294967296]"], "0 <= seed < 2**32"),
    (["--trainer.val_check_interval", "0"], "trainer.val_check_interval must be a positive integer"),
    (["--trainer.checkpoint_every_n_steps", "-1"], "trainer.checkpoint_every_n_steps must be a positive integer"),
    (["--trainer.precision", "bogus"], "trainer.precision 'bogus' is not accepted by Lightning"),
    (["--trainer.accelerator", "tpu"], "trainer.accelerator 'tpu' cannot be used on this machine"),
    (["--trainer.accelerator", "nosuch"], "trainer.accelerator 'nosuch' is not a Lightning accelerator"),
    (["--trainer.devices", "abc"], "trainer.devices 'abc' is not accepted by Lightning"),
    (["--threads", "-1"], "threads must be a positive integer"),
    (["--jobs", "0"], "jobs must be a positive integer"),
])
def test_out_of_range_values_are_refused_before_anything_is_created(tmp_path, capsys, arg, words):
    out = tmp_path / "o"
    assert main(["experiment", "-c", _cfg(tmp_path), "--output", str(out)] + arg) == 2
    assert words in _one_error(capsys)
    assert not out.exists()  # no cache/, no tensorboard/, no lock


def test_validate_ranges_finds_non_finite_floats_at_any_depth():
    from lightning_ssl_backdoor.pipeline.config import DataConfig, ExperimentConfig, Spec, TrainerConfig
    from lightning_ssl_backdoor.pipeline.validate import validate_ranges

    def cfg(**changes):
        return ExperimentConfig(**{"data": DataConfig(**SMALL["data"]), "trainer": TrainerConfig(**SMALL["trainer"]),
                                   "model": dict(SMALL["model"]), "algorithms": [Spec("supervised")], **changes})

    validate_ranges(cfg())
    with pytest.raises(ConfigError, match=r"attacks\[0\].init_args.trigger.alpha must be a finite number"):
        validate_ranges(cfg(attacks=[Spec("mosaic", {"trigger": {"alpha": float("inf")}})]))
    with pytest.raises(ConfigError, match=r"model.model_kwargs.std\[1\] must be a finite number, got nan"):
        validate_ranges(cfg(model={"model_kwargs": {"std": [1.0, float("nan")]}}))


# ---------------------------------------------------------------------------- minor
def test_ckpt_path_that_is_a_folder_a_fifo_or_a_device(tmp_path):
    from lightning_ssl_backdoor.checkpoint_io import AtomicCheckpointIO

    os.mkfifo(tmp_path / "fifo")
    io = AtomicCheckpointIO()
    with _Alarm(20):
        for path, words in ((tmp_path, "is a folder"), (tmp_path / "fifo", "named pipe"), (Path("/dev/zero"), "a device"),
                            (tmp_path / "none.ckpt", "does not exist")):
            with pytest.raises(ArtifactError, match=words):
                io.load_checkpoint(path)


def test_a_bad_ckpt_path_writes_nothing_even_with_the_logger_off(tmp_path, monkeypatch, capsys):
    """`test --trainer.logger false --ckpt_path missing.ckpt` stops with one sentence before the
    Trainer saves its config.yaml into the working folder."""
    from tests.test_harden import LIGHTNING

    monkeypatch.chdir(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with _Alarm(60):
        for path, words in ((tmp_path / "none.ckpt", "does not exist"), (fifo, "named pipe")):
            assert main(["test"] + LIGHTNING + ["--trainer.logger", "false", "--ckpt_path", str(path)]) == 2
            assert words in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_full_disk_names_the_file_being_written(tmp_path):
    from lightning_ssl_backdoor.data.artifacts import atomic_write

    def full(fh):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() raises it: no file name

    with pytest.raises(OSError) as e:
        atomic_write(tmp_path / "report" / "results.json", full)
    code, sentence = classify(e.value)
    assert code == 1 and str(tmp_path / "report" / "results.json") in sentence and "checkpoint" not in sentence
    assert list((tmp_path / "report").iterdir()) == []


def test_archive_member_declaring_a_huge_size_is_refused_unread(tmp_path, monkeypatch):
    import io

    import lightning_ssl_backdoor.data.readers_archive as ra

    packed = tmp_path / "train.tar"
    with tarfile.open(packed, "w") as tar:
        info = tarfile.TarInfo("cifar10/train/a/0.png")
        data = _png_header(4, 4)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(ra, "MAX_MEMBER_BYTES", 16)  # the real limit is 1 GiB
    with pytest.raises(DataFormatError, match=r"member 'cifar10/train/a/0.png' of archive '.*train.tar' declares"):
        ra.read_archive_folder([packed], "train")
