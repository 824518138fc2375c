"""Supervised-only baseline: cross entropy on the weakly augmented labeled batch."""

from __future__ import annotations

from typing import Any, Optional

from lightning_ssl_backdoor.ssl.base import SSLModule


class Supervised(SSLModule):
    """Labeled data only (the reference every SSL algorithm is compared with)."""

    uses_unlabeled = False

    def compute_losses(self, labeled: dict, unlabeled: Optional[dict]) -> dict[str, Any]:
        loss = self.supervised_loss(self.model(self._fmt(labeled["weak"])), labeled["y"])
        return {"loss": loss, "sup_loss": loss.detach()}
