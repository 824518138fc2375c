"""Grad-CAM confidence masks (Selvaraju et al., ICCV 2017; DePuD Eq. 21).

For a class ``c`` and the last convolutional feature map ``A`` (``[B, K, h, w]``, the output of the
backbone's ``last_conv``), ``alpha_k = mean_{ij} d y_c / d A_k(ij)`` and the map is
``ReLU(sum_k alpha_k A_k)``, upsampled bilinearly to the image size and min-max normalised to
[0, 1] per image (an all-zero map stays zero). The model runs in eval mode, so every image's logits
depend on its own activations only and one backward pass of ``sum_b y_c(b)`` gives the gradients of
the whole batch.

:func:`compute_masks` runs a whole image set through this on the device in chunks and returns the
masks quantised to uint8 (mask * 255, what the purified SSL module stores) together with the
detector scores of the same forward passes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models.interface import last_conv_of, require


def target_layer(model: nn.Module) -> nn.Module:
    """The Grad-CAM layer: the model's ``last_conv`` (:func:`lightning_ssl_backdoor.models.last_conv_of`)."""
    require(model, ("last_conv",), "Grad-CAM")
    return last_conv_of(model)


def normalize_maps(cams: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each map of ``[B, H, W]`` to [0, 1]; a constant map becomes all zeros."""
    flat = cams.reshape(len(cams), -1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.reshape_as(cams)


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target_class: int = 1,
    layer: Optional[nn.Module] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``[B, H, W]`` in [0, 1] of float images ``x`` for ``target_class``, and the
    softmax probabilities ``[B, num_classes]`` of the same forward pass (both detached).

    The model is put in eval mode for the call (and restored); its parameters need not require
    gradients."""
    layer = target_layer(model) if layer is None else layer
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        store["A"] = output
        return output

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            if not 0 <= int(target_class) < logits.shape[1]:
                raise ConfigError(f"target_class {target_class} is out of range for {logits.shape[1]} classes.")
            acts = store["A"]
            (grads,) = torch.autograd.grad(logits[:, int(target_class)].sum(), acts)
    finally:
        handle.remove()
        model.train(was_training)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * acts.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(cam), logits.detach().softmax(1)


def compute_masks(
    model: nn.Module,
    images: torch.Tensor,
    target_class: int = 1,
    chunk_size: int = 256,
    device: Optional[torch.device | str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM masks of every image (uint8 ``[N, C, H, W]`` or float [0, 1]) for ``target_class``,
    computed on ``device`` in chunks of ``chunk_size``.

    Returns ``masks`` (uint8 ``[N, H, W]``, round(255 * mask)) and ``scores`` (float ``[N]``, the
    probability of ``target_class``), both on CPU."""
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}.")
    if images.ndim != 4:
        raise ConfigError(f"images must be a [N, C, H, W] tensor, got shape {tuple(images.shape)}.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    n, _, h, w = images.shape
    masks = torch.empty(n, h, w, dtype=torch.uint8)
    scores = torch.empty(n, dtype=torch.float32)
    for s in range(0, n, chunk_size):
        x = images[s : s + chunk_size].to(device)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        cam, probs = grad_cam(model, x, target_class)
        masks[s : s + len(x)] = cam.mul(255.0).round().clamp(0, 255).to(torch.uint8).cpu()
        scores[s : s + len(x)] = probs[:, int(target_class)].float().cpu()
    return masks, scores
