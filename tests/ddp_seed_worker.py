"""Run by tests/test_gpu_ready.py: 2 CPU processes (gloo) build the same tiny FixMatch and write
per rank the strong views of two identical raw batches and the sharded hijack share."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def raw_batch() -> dict:
    g = torch.Generator().manual_seed(5)
    img = lambda n: torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)  # noqa: E731
    return {"labeled": {"x": img(4), "y": torch.arange(4) % 4, "idx": torch.arange(4)},
            "unlabeled": {"x": img(8), "idx": torch.arange(8)}}


def module():
    from lightning_ssl_backdoor.ssl import FixMatch

    torch.manual_seed(0)
    m = FixMatch(arch="tiny_cnn", num_classes=4, in_channels=3, weak_pad=1, model_kwargs={"width": 4}, threshold=0.0)
    m._hijack_images = torch.randint(0, 256, (22, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # the class the untrained model favours, so the share is not 0
        m.target = int(m.model(m._hijack_images.float() / 255).argmax(1).mode().values)
    m.hijack_chunk = 4
    return m


def run(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    result = {}
    for run in ("first", "again"):  # a fresh module from the same seed: the same draws per rank
        m = module()
        views = [m.on_after_batch_transfer(raw_batch(), 0)["unlabeled"]["strong"] for _ in range(2)]
        result[run] = {"views": [v.flatten().tolist() for v in views], "hijack": m.hijack_share()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)
