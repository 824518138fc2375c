"""``dpsgd``: differentially private SGD (Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and
Zhang, "Deep Learning with Differential Privacy", CCS 2016) as a poisoning defense (Du, Jia and
Song, ICLR 2020; DBD (003) Tables 1-2, App. B.3 and D.1).

Algorithm 1 of Abadi et al.: for a minibatch ``B``, compute every per-example gradient
``g_i = grad_theta l(theta, x_i)``, clip it to norm ``C``, ``g_i <- g_i / max(1, ||g_i||_2 / C)``,
add Gaussian noise and average, ``g = (sum_i g_i + N(0, sigma^2 C^2 I)) / |B|``, and step. Poisons
are few and individually bounded, so their combined pull is drowned by the noise. DBD: ``C = 1``,
``sigma`` grid-searched (best on CIFAR-10 BadNets 0.5, Table 10); it used Opacus's optimiser.

Implementation: vectorised per-sample gradients with ``torch.func`` (``functional_call`` + ``vmap``
+ ``grad``), not Opacus. Opacus 1.6.0 installs beside torch 2.13 but rejects BatchNorm (every model
here has it) until the model is rewritten with GroupNorm, which would change the architecture
against the other rows. Per-sample gradients are taken with BatchNorm in eval mode (running
statistics, so no sample's gradient depends on another's); the running statistics are refreshed by
one no-grad train-mode forward of each batch (not privatised: the defense relies on clipping and
noise, not on the privacy accounting, which is not computed). ``dp_sgd_step`` takes any per-sample
loss ``loss_fn(logits, *targets)``, so an SSL algorithm can privatise its unlabeled loss too.
Batches are drawn uniformly without replacement per pass (Abadi et al. sample lots by Poisson
sampling, which matters only for the privacy accounting).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lightning_ssl_backdoor.data.artifacts import atomic_write_json
from lightning_ssl_backdoor.data.cache_entry import read_json_entry
from lightning_ssl_backdoor.defenses.base import Defense, DefenseContext, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import (
    to_defense_device,
    as_float,
    check_images_labels,
    check_positive,
    clone,
    eval_mode,
    make_generator,
)
from lightning_ssl_backdoor.defenses.baselines.ft import epochs_to_steps
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models import build_model

__all__ = ["DPSGD", "clip_and_noise", "dp_sgd_step", "dp_sgd_train", "per_sample_gradients"]


def per_sample_gradients(model: nn.Module, loss_fn: Callable[..., torch.Tensor], x: torch.Tensor,
                         *targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: [B, *param.shape]}``: gradient of ``loss_fn(model(x_i), *t_i)`` for each sample alone.

    Runs the model as it is (call it in eval mode when it has BatchNorm).
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def one(p: dict, xi: torch.Tensor, *ti: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, *(t.unsqueeze(0) for t in ti))

    return vmap(grad(one), in_dims=(None, 0) + (0,) * len(targets))(params, x, *targets)


def clip_and_noise(grads: dict[str, torch.Tensor], max_norm: float = 1.0, noise_multiplier: float = 0.5,
                   generator: Optional[torch.Generator] = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``((sum_i clip_C(g_i) + N(0, sigma^2 C^2)) / B, per-sample norms [B])`` (Abadi Alg. 1)."""
    check_positive(max_norm=max_norm)
    if noise_multiplier < 0:
        raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}.")
    first = next(iter(grads.values()))
    b = first.shape[0]
    norms = torch.sqrt(sum(g.reshape(b, -1).pow(2).sum(1) for g in grads.values()))
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    out = {}
    for n, g in grads.items():
        summed = torch.einsum("b,b...->...", factor, g)
        if noise_multiplier > 0:
            noise = torch.randn(summed.shape, generator=generator, dtype=summed.dtype).to(summed.device)
            summed = summed + noise_multiplier * max_norm * noise
        out[n] = summed / b
    return out, norms


def dp_sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                max_norm: float = 1.0, noise_multiplier: float = 0.5,
                loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
                generator: Optional[torch.Generator] = None, update_batchnorm: bool = True) -> torch.Tensor:
    """One DP-SGD step on ``(x, y)``; returns the per-sample gradient norms before clipping."""
    if update_batchnorm:
        with torch.no_grad():
            model.train()
            model(x)
    with eval_mode(model):
        grads = per_sample_gradients(model, loss_fn, x, y)
    noisy, norms = clip_and_noise(grads, max_norm, noise_multiplier, generator)
    for n, p in model.named_parameters():
        if n in noisy:
            p.grad = noisy[n].to(p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norms


def dp_sgd_train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, lr: float = 0.1,
                 batch_size: int = 64, max_norm: float = 1.0, noise_multiplier: float = 0.5, momentum: float = 0.9,
                 generator: Optional[torch.Generator] = None) -> nn.Module:
    """A copy of ``model`` trained ``steps`` DP-SGD steps on ``(images, labels)`` (SGD, momentum)."""
    check_images_labels(images, labels, "DP-SGD images")
    check_positive(lr=lr, batch_size=batch_size)
    g = make_generator(0, generator)
    model = clone(model)
    device = next(model.parameters()).device
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum)
    n, bs = images.shape[0], min(int(batch_size), images.shape[0])
    order, pos = torch.randperm(n, generator=g), 0
    for _ in range(int(steps)):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + bs]
        pos += bs
        dp_sgd_step(model, opt, as_float(images[idx]).to(device), labels[idx].to(device), max_norm,
                    noise_multiplier, generator=g)
    return model.eval()


@register_defense
class DPSGD(Defense):
    """``defense: dpsgd``: a classifier trained from scratch with DP-SGD on the labeled set alone.

    NOT a plug-in into the SSL algorithms' optimiser step (which ARCHITECTURE.md sketches and
    :func:`dp_sgd_step` allows, with the algorithm's per-sample loss): per-sample clipping of
    FixMatch's / MixMatch's coupled labeled + pseudo-labelled losses is not wired yet. This row is
    DBD's supervised DP-SGD baseline: the row's architecture (``model_args``: ``arch``,
    ``model_kwargs``; ``init_weights`` is ignored), seeded with the row's seed, trained
    ``epochs`` passes (default 100, ours; ``steps`` overrides) over ``ctx.split.labeled`` (poisons
    included: clipping and noise are the defense) with :func:`dp_sgd_train`, then evaluated by the
    runner. The unlabeled set is not used, so on SSL splits with few labels the clean accuracy
    drops: the table shows what DP-SGD costs. Cached in ``stage_dir/dpsgd.json``.
    """

    name = "dpsgd"

    def __init__(self, max_norm: float = 1.0, noise_multiplier: float = 0.5, lr: float = 0.1,
                 batch_size: int = 64, epochs: float = 100, steps: Optional[int] = None, momentum: float = 0.9) -> None:
        check_positive(max_norm=max_norm, lr=lr, batch_size=batch_size, epochs=epochs)
        if noise_multiplier < 0:
            raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}.")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ConfigError(f"dpsgd steps must be a positive integer or null, got {steps!r}.")
        self.max_norm, self.noise_multiplier, self.lr, self.batch_size = float(max_norm), float(noise_multiplier), float(lr), int(batch_size)
        self.epochs, self.steps, self.momentum = float(epochs), steps, float(momentum)

    def fit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int = 0) -> nn.Module:
        return dp_sgd_train(model, images, labels, steps, self.lr, self.batch_size, self.max_norm,
                            self.noise_multiplier, momentum=self.momentum,
                            generator=torch.Generator().manual_seed(int(seed)))

    def fresh_model(self, ctx: DefenseContext) -> nn.Module:
        """The row's architecture, randomly initialised from the row's seed."""
        args = ctx.model_args or {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ctx.seed))
            model = build_model(args.get("arch", "wrn28_2"), num_classes=ctx.split.num_classes,
                                in_channels=int(ctx.split.labeled.images.shape[1]), **(args.get("model_kwargs") or {}))
        return to_defense_device(model, ctx)

    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        done = ctx.stage_dir / "dpsgd.json"
        cached = read_json_entry(done, lambda v: isinstance(v, dict))  # a damaged entry: set aside, rebuilt
        if cached is not None:
            return cached
        images, labels = ctx.split.labeled.images, ctx.split.labeled.labels
        steps = self.steps or epochs_to_steps(self.epochs, len(labels), self.batch_size)
        t0 = time.perf_counter()
        model = self.fit(self.fresh_model(ctx), images, labels, steps, ctx.seed)
        seconds = time.perf_counter() - t0
        res = {
            "test": ctx.evaluate(model),
            "history": [],
            "fit_seconds": seconds,
            "steps": int(steps),
            "has_ema": False,
            "defense_info": {
                **ctx.info,
                "trained_on": "labeled set only (from scratch)",
                "num_images": int(len(labels)),
                "max_norm": self.max_norm,
                "noise_multiplier": self.noise_multiplier,
                "privacy_accounting": None,
                "per_sample_gradients": "torch.func (vmap + grad), not Opacus",
            },
        }
        atomic_write_json(done, res)
        return res
