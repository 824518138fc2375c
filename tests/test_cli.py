"""The ssl-backdoor console script: help, LightningCLI fit/test, overrides, errors, every config."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import yaml

from lightning_ssl_backdoor.cli import main, make_cli
from tests.tiny_cifar import write_tiny_cifar10_binary

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", "null"]


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "poison", "experiment"):
        assert sub in out


def test_unknown_subcommand_is_one_sentence(capsys):
    assert main(["train"]) == 2
    assert "unknown subcommand 'train'" in capsys.readouterr().err


def test_fit_then_test_from_yaml(tmp_path, capsys):
    base = ["-c", str(ROOT / "configs/trainer/cpu_small.yaml"), "-c", str(ROOT / "configs/data/digits.yaml"),
            "-c", str(ROOT / "configs/ssl/fixmatch_small.yaml")]
    args = base + FAST + ["--trainer.default_root_dir", str(tmp_path), "--data.mu", "1", "--data.image_size", "8",
                          "--trainer.logger.class_path", "TensorBoardLogger",
                          "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(["fit"] + args) == 0
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "TensorBoard logger wrote nothing"
    cli = make_cli(args, run=False)
    ckpt = tmp_path / "model.ckpt"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(ckpt)
    assert main(["test"] + args + ["--ckpt_path", str(ckpt)]) == 0


def test_command_line_overrides_yaml(tmp_path):
    cli = make_cli(["-c", str(ROOT / "configs/data/digits.yaml"), "-c", str(ROOT / "configs/ssl/fixmatch_small.yaml"),
                    "--data.batch_size", "5", "--model.init_args.threshold", "0.5", "--data.image_size", "8"], run=False)
    assert cli.datamodule.batch_size == 5 and cli.model.hparams.threshold == 0.5
    assert cli.model.hparams.num_classes == 10  # linked from the data module


def test_bad_dataset_prints_one_sentence(tmp_path, capsys):
    args = ["fit", "-c", str(ROOT / "configs/data/digits.yaml"), "-c", str(ROOT / "configs/ssl/fixmatch_small.yaml"),
            "--data.dataset", "cifar10", "--data.root", str(tmp_path / "nowhere")] + FAST
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]


def _fragments(folder: str) -> list[str]:
    return sorted(glob.glob(str(ROOT / "configs" / folder / "*.yaml")))


@pytest.mark.parametrize("path", _fragments("ssl") + _fragments("data") + _fragments("trainer"), ids=lambda p: Path(p).name)
def test_every_lightning_config_instantiates(path, tmp_path):
    kind = Path(path).parent.name
    data = str(ROOT / "configs/data/digits.yaml")
    model = str(ROOT / "configs/ssl/fixmatch_small.yaml")
    cfgs = {"ssl": [data, path], "data": [path, model], "trainer": [path, data, model]}[kind]
    extra = ["--data.image_size", "8", "--trainer.default_root_dir", str(tmp_path)]
    if Path(path).name.startswith("cifar"):
        root = write_tiny_cifar10_binary(tmp_path / "cifar")
        extra += ["--data.root", str(root), "--data.num_labeled", "20", "--data.num_workers", "0"]
    args = [a for c in cfgs for a in ("-c", c)] + extra
    cli = make_cli(args, run=False)
    assert cli.model.hparams.num_classes == 10
    content = yaml.safe_load(Path(path).read_text())
    if kind == "ssl":
        assert type(cli.model).__name__ == content["model"]["class_path"].rsplit(".", 1)[1]
    if kind == "trainer":
        assert cli.trainer.max_steps == content["trainer"]["max_steps"]


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import lightning_ssl_backdoor.pipeline.experiment as experiment
    from lightning_ssl_backdoor.cli import main as cli_main

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "experiment_main", interrupted)
    assert cli_main(["experiment", "-c", "x.yaml"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted:") and "resume" in err and "Traceback" not in err
