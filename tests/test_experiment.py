"""`ssl-backdoor experiment`: rows, caching, resume, report files and the quickstart config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning_ssl_backdoor._lightning import Callback

import lightning_ssl_backdoor.pipeline.training as training
from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.pipeline.config import DataConfig, Spec, TrainerConfig
from lightning_ssl_backdoor.pipeline.experiment import config_from_dict

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seeds": [0],
    "data": {"dataset": "digits", "image_size": 16, "labels_per_class": 3, "batch_size": 8, "mu": 2,
             "eval_batch_size": 500},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": 0.9},
    "trainer": {"max_steps": 3, "val_check_interval": 3, "checkpoint_every_n_steps": 1, "accelerator": "cpu"},
    "algorithms": ["supervised", {"name": "fixmatch", "init_args": {"threshold": 0.5}, "label": "fixmatch-t0.5"}],
    "attacks": [None, {"name": "clean_label", "init_args": {"target": 1, "budget": 10}}],
    "dynamics_every": 1,
}


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_experiment_rows_report_and_cache(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(_write(tmp_path, TINY)), "--output", str(out), "--no_progress", "true"]) == 0
    printed = capsys.readouterr().out
    assert "| algorithm |" in printed and "results.md" in printed
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert len(rows) == 4
    for r in rows:
        assert {"algorithm", "attack", "defense", "seed", "clean_accuracy", "asr", "asr_conditioned"} <= set(r)
        assert 0 <= r["clean_accuracy"] <= 100 and r["defense"] is None
        assert len(r["data_hashes"]["test"]) == 64
    clean = [r for r in rows if r["attack"] is None]
    attacked = [r for r in rows if r["attack"] == "clean_label"]
    assert all(r["asr"] is None for r in clean) and all(0 <= r["asr"] <= 100 for r in attacked)
    assert {r["algorithm"] for r in rows} == {"supervised", "fixmatch-t0.5"}
    assert attacked[0]["num_poisons"] == 10 and attacked[0]["target"] == 1
    # what was built, typed and complete: the config's values, every other option at its default
    fm = next(r for r in rows if r["algorithm"] == "fixmatch-t0.5")["arguments"]["algorithm"]
    assert fm["threshold"] == 0.5 and fm["weak_pad"] == 1 and fm["ema_decay"] == 0.9 and fm["weak_flip"] is True
    assert fm["model_kwargs"] == {"width": 8} and fm["num_classes"] == 10 and fm["in_channels"] == 1
    att = attacked[0]["arguments"]["attack"]
    assert att["budget"] == 10 and att["target"] == 1 and att["seed"] == 0 and "budget_rate" in att
    assert res["package_version"] and res["config"]["seeds"] == [0]
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    md = (out / "results.md").read_text()
    assert "ASR cond." in md and "ca_asr_bars.png" in md
    for fig in ("ca_asr_bars.png", "curves.png", "examples_clean_label.png"):
        assert (out / fig).stat().st_size > 1000
    stores = list((out / "cache").glob("train-*/dynamics.npz"))
    assert len(stores) == 4
    from lightning_ssl_backdoor.data.artifacts import load_arrays

    arrays, _ = load_arrays(stores[0])
    hist = arrays["history"]
    assert hist.ndim == 3 and hist.shape[0] == 3 and abs(hist[-1].sum(1) - 1).max() < 1e-3

    # a second run reuses every stage: no training at all
    def no_fit(*a, **k):
        raise AssertionError("a cached row was trained again")

    monkeypatch.setattr(training.pl.Trainer, "fit", no_fit)
    assert main(["experiment", "-c", str(_write(tmp_path, TINY)), "--output", str(out), "--no_progress", "true"]) == 0
    again = json.loads((out / "results.json").read_text())["rows"]
    assert [r["clean_accuracy"] for r in again] == [r["clean_accuracy"] for r in rows]


class Crash(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            raise RuntimeError("killed")


def test_interrupted_row_resumes_to_the_same_result(tmp_path, digits_split):
    data = DataConfig(**{**TINY["data"], "image_size": 8})
    trainer = TrainerConfig(max_steps=4, val_check_interval=2, checkpoint_every_n_steps=1, accelerator="cpu")
    alg = Spec("fixmatch", {"threshold": 0.5})
    full = training.train_row(digits_split, alg, TINY["model"], data, trainer, 0, tmp_path / "a", enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="killed"):
        training.train_row(digits_split, alg, TINY["model"], data, trainer, 0, tmp_path / "b",
                           enable_progress_bar=False, extra_callbacks=[Crash()])
    assert not (tmp_path / "b" / "metrics.json").exists()
    resumed = training.train_row(digits_split, alg, TINY["model"], data, trainer, 0, tmp_path / "b", enable_progress_bar=False)
    assert resumed["steps"] == 4
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-6)
    assert [h["step"] for h in resumed["history"]] == [2, 4]


def test_bad_experiment_config_is_one_sentence(tmp_path, capsys):
    cfg = {**TINY, "algorithms": ["nosuchalgo"], "attacks": [None]}
    assert main(["experiment", "-c", str(_write(tmp_path, cfg)), "--output", str(tmp_path / "o"), "--no_progress", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown algorithm 'nosuchalgo'")


@pytest.mark.parametrize("path", sorted((ROOT / "configs/experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_experiment_configs_parse(path):
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lightning_ssl_backdoor.pipeline.config import ExperimentConfig

    parser = ArgumentParser()
    parser.add_argument("-c", "--config", action=ActionConfigFile)
    parser.add_class_arguments(ExperimentConfig, None, fail_untyped=False)
    cfg = config_from_dict(parser.parse_args(["-c", str(path)]).as_dict())
    cfg.validate()
    from lightning_ssl_backdoor.pipeline.training import resolve_algorithm

    for a in cfg.algorithms:
        resolve_algorithm(a.name)


def test_quickstart_runs_end_to_end_at_reduced_steps(tmp_path):
    """The README's main job, every row and stage, with step counts cut so the suite stays fast."""
    cfg = yaml.safe_load((ROOT / "configs/experiments/quickstart.yaml").read_text())
    cfg["trainer"].update(max_steps=4, val_check_interval=2)
    cfg["data"]["image_size"] = 8
    if "surrogate" in cfg:
        cfg["surrogate"]["steps"] = 5
    for a in cfg["attacks"]:
        if a and a["name"] == "deneb":
            a["init_args"]["steps"] = 3
    for d in cfg["defenses"]:
        if d and d["name"] == "depud":
            d["init_args"]["detector"]["steps"] = 3
    out = tmp_path / "qs"
    assert main(["experiment", "-c", str(_write(tmp_path, cfg)), "--output", str(out), "--no_progress", "true"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["algorithm"], r["attack"], r["defense"]) for r in rows] == [
        ("fixmatch", None, None), ("fixmatch", "mosaic-unlabeled", None), ("supervised", "badnets-labeled", None),
        ("supervised", "badnets-labeled", "self_training")]
    assert rows[1]["num_poisons"] > 0 and rows[2]["num_labeled"] == rows[0]["num_labeled"]
    assert all(r["asr"] is not None for r in rows[1:])
    assert set(rows[0]["base_rates"]) == {"mosaic-unlabeled", "badnets-labeled"}


def test_explicit_rows_select_from_the_lists_and_run_in_parallel_jobs(tmp_path):
    """``rows:`` picks entries of the lists by label or name; ``jobs: 2`` trains rows in two worker
    processes and gives the same numbers as one process."""
    cfg = {**TINY, "dynamics_every": None,
           "rows": [{"algorithm": "supervised"}, {"algorithm": "fixmatch-t0.5", "attack": "clean_label"}]}
    serial = tmp_path / "serial"
    assert main(["experiment", "-c", str(_write(tmp_path, cfg)), "--output", str(serial), "--no_progress", "true"]) == 0
    rows = json.loads((serial / "results.json").read_text())["rows"]
    assert [(r["algorithm"], r["attack"]) for r in rows] == [("supervised", None), ("fixmatch-t0.5", "clean_label")]
    par = tmp_path / "par"
    assert main(["experiment", "-c", str(_write(tmp_path, {**cfg, "jobs": 2})), "--output", str(par),
                 "--no_progress", "true"]) == 0
    again = json.loads((par / "results.json").read_text())["rows"]
    assert [(r["algorithm"], r["attack"], r["clean_accuracy"], r["asr"]) for r in again] == \
        [(r["algorithm"], r["attack"], r["clean_accuracy"], r["asr"]) for r in rows]


@pytest.mark.parametrize("bad", [[{"attack": "nosuch"}], [{"algo": "fixmatch"}], [{"algorithm": None}]])
def test_bad_explicit_rows_are_refused(tmp_path, capsys, bad):
    cfg = {**TINY, "rows": bad}
    assert main(["experiment", "-c", str(_write(tmp_path, cfg)), "--output", str(tmp_path / "o"), "--no_progress", "true"]) == 2
    assert "rows" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "o" / "results.json").exists()


def test_warm_start_from_the_surrogate_loads_theta0(tmp_path):
    """``warm_start: surrogate``: every row's model (and its EMA copy) starts from the attacker's
    theta_0 (Yan et al.'s victim), a different cache key than a random start."""
    from lightning_ssl_backdoor.attacks.surrogate import load_surrogate
    from lightning_ssl_backdoor.pipeline.experiment import Runner
    from lightning_ssl_backdoor.ssl import ALGORITHMS

    cfg = config_from_dict({**TINY, "warm_start": "surrogate",
                            "surrogate": {"arch": "tiny_cnn", "steps": 3, "model_kwargs": {"width": 8}}})
    runner = Runner(cfg, tmp_path / "run", progress=False)
    args = runner.model_args(0)
    theta0 = load_surrogate(args["init_weights"])
    module = ALGORITHMS["fixmatch"](num_classes=10, in_channels=1, **args)
    for name, ref in theta0.state_dict().items():
        assert torch.equal(module.model.state_dict()[name], ref)
        assert torch.equal(module.ema_model.state_dict()[name], ref)
    cold = Runner(config_from_dict(TINY), tmp_path / "cold", progress=False).model_args(0)
    assert "init_weights" not in cold
    with pytest.raises(Exception, match="does not fit"):
        ALGORITHMS["fixmatch"](num_classes=10, in_channels=1, arch="tiny_cnn", model_kwargs={"width": 16},
                               init_weights=args["init_weights"])


def test_parallel_rows_stop_at_once_when_interrupted(tmp_path, monkeypatch):
    """Ctrl-C (or a failed row) in the parent terminates the worker processes instead of waiting
    for their rows to finish."""
    import multiprocessing as mp
    import time as _time

    import lightning_ssl_backdoor.pipeline.experiment as experiment

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment.jobs, "summary", interrupted)
    cfg = config_from_dict({**TINY, "dynamics_every": None, "jobs": 2, "algorithms": ["supervised"],
                            "attacks": [None], "seeds": [0, 1, 2]})
    runner = experiment.Runner(cfg, tmp_path / "run", progress=False)
    t0 = _time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert not mp.active_children()
    assert _time.perf_counter() - t0 < 120
