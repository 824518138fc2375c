"""Every model a defense trains gets its own TensorBoard run under the row's name (issue 35):
each loop of a model repair (FT, NAD), self-training's teacher, each round's student and the final model; one learning-rate curve per
optimiser and no placeholder hp_metric in the runner's runs; and the self-training row has a curve
in the report (teacher, students, final model from its defense_info)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lightning_ssl_backdoor.cli import main

GRID = {
    "name": "tb",
    "seeds": [0],
    "data": {"dataset": "digits", "image_size": 8, "labels_per_class": 3, "batch_size": 8, "mu": 1,
             "eval_batch_size": 500},
    "model": {"arch": "tiny_cnn", "weak_pad": 1, "model_kwargs": {"width": 8}, "ema_decay": None},
    "trainer": {"max_steps": 2, "val_check_interval": 2, "checkpoint_every_n_steps": 2, "accelerator": "cpu",
                "log_every_n_steps": 1},
    "algorithms": ["supervised"],
    "attacks": [{"name": "badnets", "init_args": {"target": 1, "budget": 3}}],
    "defenses": [{"name": "self_training", "init_args": {"rounds": 2, "round_steps": 2, "final_steps": 2,
                                                         "teacher_steps": 2}}],
}


def run_grid(tmp_path: Path, **changes) -> tuple[Path, list[str]]:
    """Run GRID (with ``changes``) into ``tmp_path / "run"``: the output folder and its TensorBoard
    runs (folders holding event files, relative to ``tensorboard/``)."""
    cfg = tmp_path / "tb.yaml"
    cfg.write_text(yaml.safe_dump({**GRID, **changes}))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(cfg), "--output", str(out), "--no_progress", "true"]) == 0
    board = out / "tensorboard"
    return out, sorted({p.relative_to(board).parent.as_posix() for p in board.rglob("events.out.tfevents.*")})


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of one TensorBoard run: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_self_training_logs_each_model_as_its_own_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, runs = run_grid(tmp_path)
    board = out / "tensorboard"
    row = "supervised__badnets__self_training/seed0"
    assert runs == [f"{row}/{m}" for m in ("final", "student-round1", "student-round2", "teacher")], runs
    for run in runs:
        acc = EventAccumulator(str(board / run))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert not any("hp_metric" in t for t in tags), (run, tags)
        assert [t for t in tags if t.startswith("lr")] in ([], ["lr-SGD"]), (run, tags)
    teacher = EventAccumulator(str(board / row / "teacher"))
    teacher.Reload()
    assert "lr-SGD" in teacher.Tags()["scalars"]  # the runner's training: one lr curve
    res = json.loads((out / "results.json").read_text())
    from lightning_ssl_backdoor.report.view import row_curve

    curve = row_curve(res["rows"][0], "clean_accuracy")
    assert [s for s, _ in curve] == [2, 4, 6, 8]  # teacher, two students, the final model
    assert "curves.png" in (out / "results.md").read_text() and "tradeoff.png" not in (out / "results.md").read_text()


def test_model_repairs_log_each_training_loop(tmp_path):
    """FT's fine-tuning and NAD's teacher and student (plain sgd_train loops) log loss and lr as
    runs under the row's name (defenses/repair_log.py)."""
    import torch

    repairs = [{"name": "ft", "init_args": {"epochs": 2, "batch_size": 8}},
               {"name": "nad", "init_args": {"teacher_epochs": 1, "epochs": 1, "batch_size": 8}}]
    out, runs = run_grid(tmp_path, defenses=repairs)
    ft_row, nad_row = "supervised__badnets__ft/seed0", "supervised__badnets__nad/seed0"
    assert f"{ft_row}/ft-finetune" in runs
    assert f"{nad_row}/nad-teacher" in runs and f"{nad_row}/nad-student" in runs
    curves = scalars(out / "tensorboard" / ft_row / "ft-finetune")
    assert set(curves) == {"train/loss", "lr"}
    assert curves["lr"][0][0] == 0 and abs(curves["lr"][0][1] - 0.01) < 1e-6  # FT's lr, then the cosine
    assert all(torch.isfinite(torch.tensor(v)) for _, v in curves["train/loss"])
