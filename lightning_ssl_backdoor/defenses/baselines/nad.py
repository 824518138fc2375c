"""``nad``: neural attention distillation (Li, Lyu, Koren, Lyu, Li and Ma, "Neural Attention
Distillation: Erasing Backdoor Triggers from Deep Neural Networks", ICLR 2021).

Algorithm (Sec. 3): (1) fine-tune a copy of the backdoored model on the clean data: the teacher
``T``; (2) train the backdoored model (the student ``S``) on the clean data with
``L = CE(S(x), y) + sum_l beta_l * L_NAD(F_T^l(x), F_S^l(x))`` (Eq. 3), where the attention map of a
feature map ``F`` with ``C`` channels is ``A(F) = sum_c |F_c|^p`` (Eq. 1, ``p = 2``) and
``L_NAD = || A_T / ||A_T||_2 - A_S / ||A_S||_2 ||`` (Eq. 2). We take the distance as the mean
squared difference of the L2-normalised, flattened maps, the scale at which the paper's ``beta``
values are set. Layers: the backbone's last conv feature map by default (DBD (003) App. B.3 uses
"the last residual group" of ResNet-18); any module names of the model can be given.
Defaults: ``p = 2``, ``beta = 5000`` (the paper's CIFAR-10 value), teacher fine-tuning and student
training 10 epochs each at ``lr = 0.01`` (DBD App. D searched 0.1 / 0.01 / 0.001 for the teacher).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl_backdoor.defenses.base import ModelDefense, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import (
    to_defense_device,
    capture,
    check_benign,
    check_images_labels,
    check_positive,
    clone,
    context_labeled,
    context_seed,
    feature_map_module,
    make_generator,
    sgd_train,
)
from lightning_ssl_backdoor.defenses.baselines.ft import epochs_to_steps
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["NeuralAttentionDistillation", "nad_attention", "nad_distill", "nad_loss"]


def nad_attention(feature_map: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``A(F) / ||A(F)||_2`` flattened to ``[B, H * W]``, with ``A(F) = sum_c |F_c|^p`` (NAD Eq. 1)."""
    if feature_map.ndim != 4:
        raise ConfigError(f"NAD needs a B x C x H x W feature map, got shape {tuple(feature_map.shape)}.")
    att = feature_map.abs().pow(p).sum(dim=1).flatten(1)
    return F.normalize(att, p=2, dim=1)


def nad_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean squared difference of the normalised attention maps (NAD Eq. 2); teacher detached."""
    return (nad_attention(student_map, p) - nad_attention(teacher_map.detach(), p)).pow(2).mean()


def _modules(model: nn.Module, layers: Optional[Sequence[str]]) -> list[nn.Module]:
    if not layers:
        return [feature_map_module(model, "NAD")]
    try:
        return [feature_map_module(model, "NAD") if n == "last_conv" else model.get_submodule(n) for n in layers]
    except AttributeError as e:
        raise ConfigError(f"NAD layer not found in the model ({e}); give module names of model.named_modules().") from None


def nad_distill(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    teacher: Optional[nn.Module] = None,
    beta: float | Sequence[float] = 5000.0,
    p: float = 2.0,
    layers: Optional[Sequence[str]] = None,
    teacher_steps: int = 500,
    student_steps: int = 500,
    lr: float = 0.01,
    batch_size: int = 64,
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """A copy of ``model`` distilled from ``teacher`` (default: ``model`` fine-tuned ``teacher_steps``)."""
    check_images_labels(images, labels, "NAD images")
    g = make_generator(0, generator)
    if teacher is None:
        teacher = sgd_train(clone(model), images, labels, teacher_steps, lr, batch_size=batch_size, generator=g,
                            log_name="teacher")
    teacher.eval()
    student = clone(model)
    s_mods, t_mods = _modules(student, layers), _modules(teacher, layers)
    betas = [float(beta)] * len(s_mods) if isinstance(beta, (int, float)) else [float(b) for b in beta]
    if len(betas) != len(s_mods):
        raise ConfigError(f"NAD got {len(betas)} beta values for {len(s_mods)} layers; give one per layer.")

    with capture(s_mods) as s_out, capture(t_mods) as t_out:

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                teacher(x)
            loss = F.cross_entropy(m(x), y)
            for b, fs, ft in zip(betas, s_out, t_out):
                loss = loss + b * nad_loss(fs, ft, p)
            return loss

        sgd_train(student, images, labels, student_steps, lr, batch_size=batch_size, generator=g, loss_fn=loss_fn,
                  log_name="student")
    return student


@register_defense
class NeuralAttentionDistillation(ModelDefense):
    """``defense: nad``: ``repair(model, ctx)`` distils on the defender's benign labeled data."""

    name = "nad"
    requires = ("last_conv",)  # the default layer; none when every layer is named (see __init__)

    def __init__(self, beta: float | Sequence[float] = 5000.0, p: float = 2.0, layers: Optional[Sequence[str]] = None,
                 lr: float = 0.01, teacher_epochs: float = 10, epochs: float = 10, batch_size: int = 64,
                 benign: str = "labeled") -> None:
        check_positive(p=p, lr=lr, teacher_epochs=teacher_epochs, epochs=epochs, batch_size=batch_size)
        self.benign = check_benign(benign)
        self.beta, self.p, self.layers = beta, float(p), list(layers) if layers else None
        if self.layers and "last_conv" not in self.layers:
            self.requires = ()
        self.lr, self.teacher_epochs, self.epochs, self.batch_size = float(lr), teacher_epochs, epochs, int(batch_size)

    def repair(self, model: nn.Module, ctx: Any) -> nn.Module:
        model = to_defense_device(model, ctx)
        images, labels = context_labeled(ctx, self.benign)
        n = len(labels)
        return nad_distill(
            model, images, labels, None, self.beta, self.p, self.layers,
            epochs_to_steps(self.teacher_epochs, n, self.batch_size), epochs_to_steps(self.epochs, n, self.batch_size),
            self.lr, self.batch_size, torch.Generator().manual_seed(context_seed(ctx)),
        )
