"""The scale benchmarks run (tiny, on CPU): GPU throughput with its FLOP count and peak lookup, and
the host synchronisations per training step of the Lightning path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_throughput  # noqa: E402
import step_overhead  # noqa: E402


def test_gpu_throughput_tiny_on_cpu(tmp_path):
    res = gpu_throughput.main(["--device", "cpu", "--arch", "tiny_cnn", "--batch", "2", "--mu", "1", "--image-size", "8",
                               "--warmup", "1", "--steps", "2", "--compile", "off", "eager",
                               "--output", str(tmp_path / "gt")])
    assert [r["compile"] for r in res["rows"]] == ["off", "eager"]
    for r in res["rows"]:
        assert r["images_per_step"] == 6 and r["images_per_s"] > 0 and r["flops_per_step"] > 0
        assert r["precision"] == "bf16-mixed" and r["channels_last"] and r["share_of_peak"] is None
    assert json.loads((tmp_path / "gt.json").read_text())["rows"][0]["arch"] == "tiny_cnn"
    assert "images/s" in (tmp_path / "gt.md").read_text()


def test_flop_count_is_forward_plus_backward_of_the_convolutions():
    """FlopCounterMode on the tiny CNN: 3 conv layers, forward 2*MACs, backward twice that (input and
    weight gradients, none for the first layer's input) plus the linear head."""
    from lightning_ssl_backdoor.ssl import FixMatch

    m = FixMatch(arch="tiny_cnn", num_classes=10, in_channels=3, model_kwargs={"width": 4}, ema_decay=None)
    n, s = 2, 8
    convs = [(3, 4, s), (4, 8, s // 2), (8, 16, s // 4)]  # (c_in, c_out, output side)
    fwd = [2 * n * ci * co * 9 * o * o for ci, co, o in convs]
    lin = 2 * n * 16 * 10
    expected = sum(fwd) + fwd[0] + 2 * sum(fwd[1:]) + 3 * lin
    assert gpu_throughput.step_flops(m, n, s, torch.device("cpu")) == expected


@pytest.mark.parametrize("name,peak", [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                       ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-40GB", 312.0),
                                       ("Tesla T4", None)])
def test_peak_table(name, peak):
    assert gpu_throughput.peak_bf16_tflops(name) == peak


def test_rows_progress_bar_does_not_sync_every_step():
    """Lightning's bar converts prog_bar values to Python numbers after every step (a GPU sync);
    train_row's SSLProgressBar reads them only when it redraws (every 20 steps)."""
    args = {"arch": "tiny_cnn", "model_kwargs": {"width": 4}}
    counts = {}
    for refresh in (1, None):
        with step_overhead.ItemCounter() as counter:
            step_overhead.run_lightning(args, 2, 8, 1, torch.device("cpu"), bare=False, refresh=refresh, counter=counter)
        counts[refresh] = step_overhead.run_lightning.items_per_step
    assert counts[1] >= 2 and counts[None] == 0
