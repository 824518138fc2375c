"""Counting what a GPU would wait for, on the CPU: host synchronisations by kind and kernel-like
aten ops (issue 32; used by ``gpu_readiness.py`` and ``step_overhead.py``).

:class:`Counter` is a ``TorchDispatchMode`` (it sees every aten op the dispatcher runs, below
autograd, so backward ops too) that also wraps ``Tensor.tolist`` / ``Tensor.__bool__`` while active:

- ``nonzero`` (also the one inside a boolean-mask ``index`` / ``index_put_``);
- ``item``: ``_local_scalar_dense`` not from ``bool`` (``item()``, ``int()``, ``float()``);
- ``tolist``; tensor ``bool``;
- data-dependent outputs (``masked_select``, ``unique``, ``bincount``);
- host tensors: ``torch.tensor(data)`` (``lift_fresh``; a blocking host-to-device copy on CUDA).

Kernel-like op: every aten op run, less views, ``empty``, ``detach`` and host-side 0-dim wrapped
numbers (``scalar_tensor``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_KINDS = ("nonzero", "item", "tolist", "bool", "data-dependent", "host tensor")
_NOT_KERNELS = {"empty", "empty_strided", "detach", "lift_fresh", "scalar_tensor", "_local_scalar_dense", "alias",
                "_unsafe_view", "sym_size", "sym_stride", "sym_numel", "is_same_size"}
_DATA_DEPENDENT = {"masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive", "bincount",
                   "nonzero_static"}


class Counter(TorchDispatchMode):
    """Counts host syncs by kind and kernel-like aten ops while active (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = dict.fromkeys(SYNC_KINDS, 0)
        self.ops: dict[str, int] = {}
        self._scalar_reads = 0
        self._patched: list[tuple[str, Any]] = []

    @property
    def kernels(self) -> int:
        return sum(self.ops.values())

    def totals(self) -> dict[str, int]:
        """Syncs by kind so far (also while active)."""
        out = dict(self.syncs)
        out["item"] += self._scalar_reads
        return out

    @property
    def count(self) -> int:
        return sum(self.totals().values())

    def _python_hook(self, name: str, kind: str) -> None:
        orig = getattr(torch.Tensor, name)
        counter = self

        def wrapped(t, *a, **k):  # noqa: ANN001
            counter.syncs[kind] += 1
            if kind == "bool":
                counter._scalar_reads -= 1  # its _local_scalar_dense is counted here, not as an item
            return orig(t, *a, **k)

        self._patched.append((name, orig))
        setattr(torch.Tensor, name, wrapped)

    def __enter__(self) -> "Counter":
        for name, kind in (("tolist", "tolist"), ("__bool__", "bool")):
            self._python_hook(name, kind)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for name, orig in reversed(self._patched):
            setattr(torch.Tensor, name, orig)
        self._patched.clear()
        self.syncs["item"] += self._scalar_reads
        self._scalar_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense":
            self._scalar_reads += 1
        elif name == "nonzero":
            self.syncs["nonzero"] += 1
        elif name in _DATA_DEPENDENT:
            self.syncs["data-dependent"] += 1
        elif name == "lift_fresh":
            self.syncs["host tensor"] += 1
        elif name in ("index", "index_put_", "index_put") and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ())):
            self.syncs["nonzero"] += 1  # a boolean mask index runs nonzero inside the op
        if not (func.is_view or name in _NOT_KERNELS or name.startswith("sym_")):
            self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **kwargs)
