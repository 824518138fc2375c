"""Writes a tiny CIFAR-10 binary release (a few records per batch) for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_cifar10_binary(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-10-batches-bin"
    d.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (d / "batches.meta.txt").write_text("\n".join(names) + "\n")
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = (np.arange(per_batch) % 10).astype(np.uint8)
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        records = np.concatenate([labels[:, None], pixels], axis=1)
        (d / name).write_bytes(records.tobytes())
    return Path(root)
