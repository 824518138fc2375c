"""The attacker's surrogate / initial model theta_0, trained on the labeled data only.

Yan et al. (000, Sec. VI-B, Step 1) train the coarse model theta_0 on the labeled set; their code
uses SGD (lr 0.03, Nesterov, momentum 0.9) with a cosine schedule and FixMatch's weak
augmentation. :func:`train_surrogate` does that for ``steps`` iterations; :func:`save_surrogate`
/ :func:`load_surrogate` store it as safetensors plus its build settings (nothing is unpickled).
The surrogate is a built-in ``arch`` or your own ``model`` (an instance or a class_path mapping
following :mod:`lightning_ssl_backdoor.models.interface`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from lightning_ssl_backdoor.attacks.adversarial import predict
from lightning_ssl_backdoor.augment import WeakAugment
from lightning_ssl_backdoor.data.artifacts import atomic_write
from lightning_ssl_backdoor.data.imageset import ImageSet
from lightning_ssl_backdoor.errors import ArtifactError, ConfigError, malformed
from lightning_ssl_backdoor.models import resolve_model

SURROGATE_FORMAT = "lightning_ssl_backdoor.surrogate"


def data_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 ``images`` in [0, 1] units (std floored at 1e-3)."""
    x = images.float().div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def _build(arch: Optional[str], num_classes: int, in_channels: int, model_kwargs: Dict[str, Any], model: Any = None):
    return resolve_model(model, arch or "", num_classes, in_channels, model_kwargs)


def train_surrogate(
    labeled: ImageSet,
    arch: str = "tiny_cnn",
    steps: int = 500,
    lr: float = 0.03,
    batch_size: int = 64,
    seed: int = 0,
    device: Optional[str] = None,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    augment: bool = True,
    normalize: str = "data",
    model_kwargs: Optional[Dict[str, Any]] = None,
    progress: bool = True,
    model: Any = None,
):
    """Train ``arch`` (or ``model``) on ``labeled`` (uint8 images, labels >= 0); return it in eval mode.

    SGD with Nesterov momentum 0.9, cosine decay of ``lr`` over ``steps`` iterations, weight decay,
    FixMatch's weak augmentation (flip + reflect-pad-and-crop by 1/8 of the size). Batches, weight
    initialisation and augmentation are seeded with ``seed`` (the global RNG is left untouched).
    ``normalize="data"`` puts the labeled set's per-channel mean/std in the model (``"default"``:
    the model registry's defaults). Returns a ``Classifier`` carrying ``surrogate_config``.

    ``model``: your own model instead of ``arch`` -- an ``nn.Module`` with ``labeled``'s number of
    classes (trained in place and returned) or a ``{"class_path", "init_args"}`` mapping (built with
    ``seed``); it keeps its own normalisation (``normalize`` and ``model_kwargs`` apply to ``arch``).
    """
    if len(labeled) == 0 or bool((labeled.labels < 0).any()):
        raise ConfigError("the surrogate needs labeled images (labels >= 0); pass split.labeled.")
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"train_surrogate needs steps >= 1, batch_size >= 1 and lr > 0 (got {steps}, {batch_size}, {lr}).")
    if normalize not in ("data", "default"):
        raise ConfigError(f"normalize must be 'data' or 'default', got {normalize!r}.")

    num_classes = labeled.num_classes or int(labeled.labels.max()) + 1
    c, h, w = labeled.image_shape
    kwargs = dict(model_kwargs or {})
    if normalize == "data" and model is None:
        kwargs["mean"], kwargs["std"] = data_stats(labeled.images)
    spec = model
    dev = torch.device(device) if device else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = _build(arch, num_classes, c, kwargs, spec)
    model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
    pad = max(1, int(round(min(h, w) / 8)))
    aug = WeakAugment(pad=pad, padding_mode="reflect" if pad < min(h, w) else "replicate")
    g = torch.Generator().manual_seed(int(seed))
    g_aug = torch.Generator(device=dev).manual_seed(int(seed) + 1)
    x_all, y_all = labeled.images, labeled.labels
    n = len(labeled)
    order = torch.randperm(n, generator=g)
    pos = 0
    for _ in tqdm(range(steps), desc="surrogate", disable=not progress, leave=False):
        if pos + min(batch_size, n) > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + min(batch_size, n)]
        pos += len(idx)
        x = x_all[idx].to(dev).float().div_(255.0)
        if augment:
            x = aug(x, generator=g_aug)
        loss = F.cross_entropy(model(x), y_all[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.surrogate_config = {"num_classes": int(num_classes), "in_channels": int(c)}
    if spec is None:
        model.surrogate_config.update(arch=arch, model_kwargs=kwargs)
    else:  # a class_path mapping rebuilds the model; an instance must be handed to load_surrogate
        model.surrogate_config["model"] = (
            spec if not isinstance(spec, torch.nn.Module) else f"instance of {type(spec).__module__}.{type(spec).__qualname__}"
        )
    return model


def save_surrogate(model, path: str | Path, config: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors, atomically) with its build settings
    (``config`` or ``model.surrogate_config``: num_classes, in_channels and either arch +
    model_kwargs or model, a class_path mapping or the name of an instance's class)."""
    cfg = dict(config or getattr(model, "surrogate_config", {}) or {})
    if not ({"num_classes", "in_channels"} <= set(cfg) and ("arch" in cfg or "model" in cfg)):
        raise ConfigError("save_surrogate needs the model's num_classes, in_channels and arch or model (pass config=).")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": SURROGATE_FORMAT, "config": json.dumps(cfg, sort_keys=True)})
    return atomic_write(path, lambda fh: fh.write(blob))


def load_surrogate(path: str | Path, device: Optional[str] = None, model: Any = None):
    """Rebuild a model written by :func:`save_surrogate` (safetensors: no pickle), in eval mode.

    ``model``: the instance to load the weights into (needed when the surrogate was an instance of
    your own model; optional otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"surrogate checkpoint {path} does not exist; train one or fix the path.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ArtifactError(f"{path} is not a readable safetensors checkpoint ({e}).") from None
    if meta.get("format") != SURROGATE_FORMAT:
        raise ArtifactError(f"{path} is not a surrogate checkpoint written by save_surrogate.")
    with malformed(path, "surrogate checkpoint"):  # e.g. no 'config' entry in its metadata
        cfg = json.loads(meta["config"])
        num_classes, in_channels = int(cfg["num_classes"]), int(cfg["in_channels"])
        arch, model_kwargs = cfg.get("arch"), dict(cfg.get("model_kwargs", {}))
    spec = model if model is not None else cfg.get("model")
    if isinstance(spec, str):
        raise ArtifactError(f"{path} holds the weights of your own model ({spec}): pass that model, load_surrogate(path, model=...).")
    if spec is None:
        what = arch
    else:
        what = type(spec).__name__ if isinstance(spec, torch.nn.Module) else spec.get("class_path")
    model = _build(arch, num_classes, in_channels, model_kwargs if spec is None else {}, spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"{path} does not match the {what} architecture ({e}).") from None
    model.surrogate_config = cfg
    if device:
        model.to(device)
    return model.eval()


def accuracy(model, images: ImageSet | torch.Tensor, labels: Optional[torch.Tensor] = None) -> float:
    """Fraction of ``images`` (an ImageSet, or uint8 tensor + labels) the model classifies right."""
    if isinstance(images, ImageSet):
        labels, images = images.targets, images.images
    pred = predict(model, images.float().div(255.0))
    return float((pred == labels).float().mean()) if len(pred) else float("nan")


__all__: Sequence[str] = ["accuracy", "data_stats", "load_surrogate", "save_surrogate", "train_surrogate"]


def surrogate_parameters() -> dict:
    """The options of a ``surrogate`` config block, typed: :func:`train_surrogate`'s (less the data
    and the progress bar) plus ``checkpoint``, a file of :func:`save_surrogate` used instead of
    training one."""
    import inspect

    from lightning_ssl_backdoor.signatures import function_parameters

    params = function_parameters(train_surrogate, exclude=("labeled", "progress"))
    params["checkpoint"] = inspect.Parameter("checkpoint", inspect.Parameter.KEYWORD_ONLY,
                                             default=None, annotation=Optional[str])
    return params

