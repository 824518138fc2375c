"""Per-sample training dynamics: each unlabeled example's softmax prediction at chosen steps.

The store is what Carlini's training-dynamics defense (Sec. 5.3) consumes: an array
``[K records, N unlabeled, C]`` whose row ``j`` is unlabeled example ``j`` (its index in the split),
gathered across DDP ranks (each rank predicts its shard; shards are all-gathered and scattered back
by index), saved as ``.npz`` + JSON manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning_ssl_backdoor._lightning import pl
import torch
from lightning_ssl_backdoor._lightning import Callback

from lightning_ssl_backdoor.data.artifacts import save_arrays


class TrainingDynamicsRecorder(Callback):
    """Record softmax predictions on the whole unlabeled set every ``every_n_steps`` steps.

    Args:
        every_n_steps: recording interval in optimizer steps (a record is also taken at the end).
        path: where ``on_fit_end`` writes the ``.npz`` store (``None``: keep in memory only).
        use_ema: predict with the EMA weights when the module keeps them.
        batch_size: images per forward pass.
    """

    def __init__(self, every_n_steps: int, path: Optional[str | Path] = None, use_ema: bool = False,
                 batch_size: int = 1024) -> None:
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.every, self.path, self.use_ema, self.batch_size = int(every_n_steps), path, use_ema, int(batch_size)
        self.records: list[torch.Tensor] = []
        self.steps: list[int] = []

    @torch.no_grad()
    def predict_unlabeled(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        images = trainer.datamodule.split.unlabeled.images
        n = len(images)
        rank, world = trainer.global_rank, trainer.world_size
        shard = torch.arange(rank, n, world)
        per_rank = (n + world - 1) // world
        if len(shard) < per_rank:  # pad so every rank gathers the same shape
            shard = torch.cat([shard, shard[-1:].repeat(per_rank - len(shard))])
        model = pl_module.ema_model if self.use_ema and getattr(pl_module, "ema_model", None) is not None else pl_module.model
        was_training = model.training
        model.eval()
        probs = []
        for s in range(0, len(shard), self.batch_size):
            x = images[shard[s : s + self.batch_size]].to(pl_module.device).float().div_(255.0)
            probs.append(torch.softmax(model(x).float(), dim=1))
        model.train(was_training)
        probs_t = torch.cat(probs)
        idx = shard.to(pl_module.device)
        if world > 1:
            probs_t = pl_module.all_gather(probs_t).reshape(-1, probs_t.shape[-1])
            idx = pl_module.all_gather(idx).reshape(-1)
        out = torch.empty(n, probs_t.shape[-1], dtype=torch.float32, device=probs_t.device)
        out[idx] = probs_t
        return out.cpu()

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = int(trainer.global_step)
        if self.steps and self.steps[-1] == step:
            return
        self.records.append(self.predict_unlabeled(trainer, pl_module).to(torch.float16))
        self.steps.append(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step % self.every == 0:
            self._record(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module)
        if self.path is not None and trainer.is_global_zero:
            save_arrays(self.path, {"history": self.history(), "steps": torch.tensor(self.steps)},
                        {"kind": "training_dynamics", "use_ema": self.use_ema})

    def history(self) -> torch.Tensor:
        """``[K, N, C]`` float32 softmax predictions (K = number of records)."""
        return torch.stack(self.records).float() if self.records else torch.empty(0)

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records), "steps": list(self.steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))
        self.steps = list(state_dict.get("steps", []))
