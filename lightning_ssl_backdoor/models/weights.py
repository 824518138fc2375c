"""Start a model from saved weights (a surrogate's safetensors file or a weights-only state dict)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lightning_ssl_backdoor.errors import ArtifactError


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Load ``path`` (a surrogate safetensors file or a weights-only torch state dict) into
    ``model``, strictly: a checkpoint of another architecture or class count is refused."""
    p = Path(path)
    if not p.is_file():
        what = "is not a regular file (a folder, a FIFO or a device)" if p.exists() else "does not exist"
        raise ArtifactError(f"init_weights: {p} {what}; give a weights file.")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except Exception as e:  # safetensors raises its own error types on corrupt files
            raise ArtifactError(f"init_weights: {p} is not a readable safetensors file ({e}).") from None
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ArtifactError(f"init_weights: {p} is not a weights-only torch state dict ({e}).") from None
        if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint of an SSLModule
            state = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = [line.strip() for line in str(e).splitlines()[1:2]] or [str(e)]
        raise ArtifactError(f"init_weights: {p} does not fit this model ({detail[0]}).") from None
