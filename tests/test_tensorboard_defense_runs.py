"""Every model a defense trains gets its own TensorBoard run under the row's name (issue 35):
self-training's teacher, each round's student and the final model; one learning-rate curve per
optimiser and no placeholder hp_metric in the runner's runs; and the self-training row has a curve
in the report (teacher, students, final model from its defense_info)."""

from __future__ import annotations

import json

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


def test_self_training_logs_each_model_as_its_own_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tmp_path / "tb.yaml"
    cfg.write_text(yaml.safe_dump(GRID))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(cfg), "--output", str(out), "--no_progress", "true"]) == 0
    board = out / "tensorboard"
    runs = sorted({p.relative_to(board).parent.as_posix() for p in board.rglob("events.out.tfevents.*")})
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
