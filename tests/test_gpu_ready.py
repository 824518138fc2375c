"""GPU readiness on the CPU (issue 32): the augmentation runs without host syncs, compiles into one
graph (``fullgraph=True``) with the pixels of the eager run, and the EMA update is one foreach call
per kind of tensor."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_ssl_backdoor.augment import StrongAugment, WeakAugment

SYNC_OPS = {"nonzero", "_local_scalar_dense", "masked_select", "unique", "_unique2", "bincount", "lift_fresh"}


class OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def batch(b=24, size=12, seed=0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_weak_and_masked_strong_make_no_host_sync():
    x, weak, strong = batch(), WeakAugment(pad=2), StrongAugment(mode="masked")
    with OpLog() as log:
        strong(weak(x))
    assert not SYNC_OPS & set(log.names), sorted(SYNC_OPS & set(log.names))
    assert "index_put_" not in log.names  # no boolean-mask writes


def test_augmentation_compiles_whole_with_the_eager_pixels():
    """fullgraph=True raises on any graph break; the "eager" backend checks the capture quickly
    (the inductor backend, model.compile_augment: true, costs a C++ build of ~1 min on this CPU)."""
    import torch._dynamo as dynamo

    dynamo.reset()
    x = batch()
    weak, strong = WeakAugment(pad=2), StrongAugment()  # mode "auto": masked under compile
    wp = weak.sample_params(len(x), generator=torch.Generator().manual_seed(1))
    sp = strong.sample_params(len(x), 12, 12, generator=torch.Generator().manual_seed(2))
    eager_w = weak.apply_params(x, wp)
    eager_s = StrongAugment(mode="masked").apply_params(eager_w, sp)
    weak.compile_apply(backend="eager")
    strong.compile_apply(backend="eager")
    assert torch.equal(weak.apply_params(x, wp), eager_w)
    assert torch.allclose(strong.apply_params(eager_w, sp), eager_s, atol=1e-6, rtol=0)
    explained = dynamo.explain(StrongAugment()._augment_batch)(eager_w, sp.ops, sp.levels, sp.apply, sp.signs, sp.boxes)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    dynamo.reset()


def test_ema_update_is_foreach_and_exact():
    from lightning_ssl_backdoor.ssl import FixMatch

    torch.manual_seed(0)
    m = FixMatch(arch="tiny_cnn", num_classes=4, in_channels=3, model_kwargs={"width": 4}, ema_decay=0.9)
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
        for b in m.model.buffers():
            b.add_(3)
    before = [p.clone() for p in m.ema_model.parameters()]
    with OpLog() as log:
        m.update_ema()
    assert sorted(n for n in log.names if n != "detach") == ["_foreach_add_", "_foreach_copy_", "_foreach_mul_"]
    for e, b, p in zip(m.ema_model.parameters(), before, m.model.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * p, atol=1e-6)
    for e, b in zip(m.ema_model.buffers(), m.model.buffers()):
        assert torch.equal(e, b)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_draw_their_own_reproducible_augmentations_and_shard_the_hijack_check(tmp_path):
    """2 processes, gloo: each rank's views are the same in two runs, differ between the ranks and
    between steps; the hijack share scored in shards and summed equals the single-process one."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(root / "tests" / "ddp_seed_worker.py"), str(_free_port()), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["first"] == r0["again"] and r1["first"] == r1["again"]  # reproducible per rank
    r0, r1 = r0["first"], r1["first"]
    assert r0["views"][0] != r1["views"][0] and r0["views"][1] != r1["views"][1]  # ranks differ
    assert r0["views"][0] != r0["views"][1]  # the generator advances
    sys.path.insert(0, str(root / "tests"))
    from ddp_seed_worker import module

    single = module()  # no process group: one process scores every chunk
    assert 0 < single.hijack_share() == r0["hijack"] == r1["hijack"]


def test_compile_augment_option_gives_the_views_of_the_eager_masked_form():
    import torch._dynamo as dynamo

    from lightning_ssl_backdoor.ssl import FixMatch

    def views(**kw):
        torch.manual_seed(0)
        m = FixMatch(arch="tiny_cnn", num_classes=4, in_channels=3, weak_pad=1, model_kwargs={"width": 4}, **kw)
        if not kw:
            m.strong.mode = "masked"
        g = torch.Generator().manual_seed(3)
        raw = {"labeled": {"x": torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g),
                           "y": torch.arange(4) % 4, "idx": torch.arange(4)},
               "unlabeled": {"x": torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g),
                             "idx": torch.arange(8)}}
        torch.manual_seed(1)
        return m.on_after_batch_transfer(raw, 0)

    dynamo.reset()
    eager, compiled = views(), views(compile_augment="eager")  # "eager": the capture without a C++ build
    assert torch.equal(eager["labeled"]["weak"], compiled["labeled"]["weak"])
    assert torch.allclose(eager["unlabeled"]["strong"], compiled["unlabeled"]["strong"], atol=1e-6, rtol=0)
    dynamo.reset()
