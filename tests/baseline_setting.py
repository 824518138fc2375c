"""A tiny poison-label backdoor setting for the baseline-defense tests (plain torch, seconds on CPU).

Four classes of 12 x 12 colour images, each class a sinusoidal grating of its own spatial frequency
(random orientation, phase and colour, pixel noise: flips and shifts keep the class); a 3 x 3 black-and-white checker patch in the bottom-right corner is
the trigger; 10% of the training images (non-target) carry it and are relabelled to the target 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.models import tiny_cnn

SIZE, CLASSES, TARGET = 12, 4, 0


def make_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(n) % CLASSES
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    angle = math.pi * torch.rand(n, generator=g)  # any orientation: flips keep the class
    freq = torch.tensor([0.4, 0.8, 1.3, 2.0])[labels] * (0.9 + 0.2 * torch.rand(n, generator=g))
    phase = 2 * math.pi * torch.rand(n, generator=g)
    proj = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
    wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    colour = 0.3 + 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    x = 0.5 + colour * wave[:, None] * 0.6 + 0.08 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


def add_trigger(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    patch = (torch.arange(3)[:, None] + torch.arange(3)[None, :]) % 2 * 255
    out[:, :, -4:-1, -4:-1] = patch.to(torch.uint8)
    return out


@dataclass
class Setting:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    poison_mask: torch.Tensor
    clean_images: torch.Tensor  # the defender's small clean labeled set
    clean_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    model: torch.nn.Module


def new_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny_cnn(num_classes=CLASSES, in_channels=3, width=8, mean=(0.5,) * 3, std=(0.25,) * 3)


def train_plain(model, images, labels, steps=300, lr=0.05, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(model(images[idx].float() / 255), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    model.eval()
    return float((model(images.float() / 255).argmax(1) == labels).float().mean())


@torch.no_grad()
def asr(model, images, labels, transform=None) -> float:
    model.eval()
    keep = labels != TARGET
    x = add_trigger(images[keep]).float() / 255
    if transform is not None:
        x = transform(x)
    return float((model(x).argmax(1) == TARGET).float().mean())


def build_setting(n_train: int = 900, n_clean: int = 150, n_test: int = 300, rate: float = 0.1,
                  steps: int = 300) -> Setting:
    g = torch.Generator().manual_seed(0)
    tr_x, tr_y = make_images(n_train, g)
    cl_x, cl_y = make_images(n_clean, g)
    te_x, te_y = make_images(n_test, g)
    candidates = torch.nonzero(tr_y != TARGET).flatten()
    chosen = candidates[torch.randperm(candidates.numel(), generator=g)[: int(rate * n_train)]]
    mask = torch.zeros(n_train, dtype=torch.bool)
    mask[chosen] = True
    tr_x[mask] = add_trigger(tr_x[mask])
    tr_y = tr_y.clone()
    tr_y[mask] = TARGET
    model = train_plain(new_model(0), tr_x, tr_y, steps=steps)
    return Setting(tr_x, tr_y, mask, cl_x, cl_y, te_x, te_y, model)
