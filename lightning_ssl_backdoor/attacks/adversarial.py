"""Shared machinery for optimisation-based attacks: a frozen-model context, batched L-inf PGD.

Every optimisation works on input tensors only: the model is put in eval mode (BatchNorm uses its
running statistics, so one image's result never depends on the others in its batch) with
``requires_grad`` off for its parameters, and both are restored afterwards. Per-image losses are
*summed* over the batch, so each image's gradient is the gradient of its own loss whatever the
batch size.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lightning_ssl_backdoor.errors import ConfigError


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Arg-max predictions of float images ``x`` (any device) with the frozen model, on CPU."""
    dev = model_device(model)
    with frozen(model):
        out = [model(x[i : i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def pgd_linf(
    model: torch.nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: Optional[float] = None,
    targeted: bool = False,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "PGD",
) -> torch.Tensor:
    """L-inf projected gradient descent (Madry et al. 2018) on float images ``x`` in [0, 1].

    Untargeted (``targeted=False``): ascend the cross-entropy w.r.t. ``labels``, i.e. push the
    images away from their class (Turner et al.'s label-consistent perturbation. Yan et al. print
    it as Eq. 13, ``argmin L(x', y, theta)``; descending the true label's loss would make the image
    *more* typical of its class, the opposite of the stated aim of corrupting the object features,
    so we follow Turner et al. and maximise it). Targeted: descend the cross-entropy w.r.t.
    ``labels``. Signed-gradient steps of
    ``step_size`` (default ``2.5 * eps / steps``), projection onto the eps-ball and onto [0, 1]
    after each step. Returns the perturbed images (float, on ``x``'s device).
    """
    if eps < 0 or steps < 0:
        raise ConfigError(f"PGD needs eps >= 0 and steps >= 0, got eps={eps}, steps={steps}.")
    step = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    dev = model_device(model)
    out = torch.empty_like(x)
    sign = -1.0 if targeted else 1.0
    with frozen(model):
        bar = tqdm(total=len(x) * steps, desc=desc, disable=not progress, leave=False)
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size].to(dev)
            yb = labels[s : s + batch_size].to(dev)
            delta = torch.zeros_like(xb)
            for _ in range(steps):
                delta.requires_grad_(True)
                loss = F.cross_entropy(model(xb + delta), yb, reduction="sum")
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta = delta + sign * step * grad.sign()
                    delta = delta.clamp(-eps, eps)
                    delta = (xb + delta).clamp(0.0, 1.0) - xb
                bar.update(len(xb))
            out[s : s + batch_size] = (xb + delta).detach().to(out.device)
        bar.close()
    return out


class PGDOptions:
    """Mix-in for attacks that enhance images with untargeted L-inf PGD before the trigger
    (Turner et al.'s clean-label and label-consistent attacks; Yan et al. Eq. 13): the
    :class:`~lightning_ssl_backdoor.attacks.base.Attack` arguments plus ``eps`` (16/255),
    ``steps`` (10) and ``step_size`` (default 2.5 eps / steps, Madry et al.)."""

    name = ""

    def __init__(
        self,
        *,
        eps: float = 16.0 / 255.0,
        steps: int = 10,
        step_size: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < float(eps) <= 1 or int(steps) < 1:
            raise ConfigError(f"{self.name} needs 0 < eps <= 1 and steps >= 1, got eps={eps}, steps={steps}.")
        self.eps, self.steps = float(eps), int(steps)
        self.step_size = None if step_size is None else float(step_size)

    def untargeted_pgd(self, model, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Batched PGD away from ``labels`` within ``eps`` of ``x`` (model frozen)."""
        return pgd_linf(model, x, labels, self.eps, self.steps, self.step_size, targeted=False,
                        progress=self.progress, desc=self.name)
