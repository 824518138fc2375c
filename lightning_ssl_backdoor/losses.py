"""Loss functions for semi-supervised learning and backdoor defenses (their schedules: :mod:`.schedules`,
re-exported here).

Pure functions: logits or probabilities in, a scalar mean out unless a ``reduction`` says
otherwise. Class targets are ``long`` tensors of class indices ``[B]``; soft targets are
probability tensors ``[B, C]``. Every function is checked against a per-sample loop in
``tests/test_losses.py``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.schedules import cosine_rampdown, linear_rampup, sigmoid_rampup, tsa_threshold

__all__ = [
    "active_passive_loss",
    "complementary_loss",
    "cosine_rampdown",
    "entropy_loss",
    "fixmatch_pseudo_labels",
    "fixmatch_unlabeled_loss",
    "generalized_cross_entropy",
    "kl_div_from_logits",
    "linear_rampup",
    "mixmatch_unlabeled_loss",
    "mixup",
    "nt_xent_loss",
    "pseudo_label_loss",
    "sharpen",
    "sigmoid_rampup",
    "softmax_mse_loss",
    "symmetric_cross_entropy",
    "tsa_mask",
    "tsa_threshold",
    "uda_unlabeled_loss",
]

# RCE replaces log(0) of the one-hot label with log(1e-4) (SCE, Wang et al. 2019).
RCE_LABEL_CLAMP = 1e-4
COMPLEMENTARY_EPS = 1e-12


def _check_2d(logits: torch.Tensor, name: str = "logits") -> None:
    if logits.dim() != 2:
        raise ConfigError(
            f"{name} must be a [batch, classes] tensor, got shape {tuple(logits.shape)}."
        )


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean() if per_sample.numel() else per_sample.sum()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _masked_mean_over_all(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(per_sample * mask) / B``: masked samples count as zero in the mean over all ``B``."""
    masked = torch.where(mask, per_sample, torch.zeros_like(per_sample))
    return masked.sum() / max(1, per_sample.numel())


# --------------------------------------------------------------------------------------------
# Pseudo-labelling and consistency (FixMatch, PseudoLabel, Pi-Model / MeanTeacher, VAT, UDA)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def fixmatch_pseudo_labels(
    logits_weak: torch.Tensor, threshold: float = 0.95
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels of FixMatch (Sohn et al. 2020, Eq. 4), without gradient.

    Returns ``(pseudo_labels = argmax softmax(logits_weak), mask = max prob >= threshold (bool),
    max_prob)``, all detached from the graph.
    """
    _check_2d(logits_weak, "logits_weak")
    weak = logits_weak.detach()
    probs = torch.softmax(weak.to(torch.promote_types(weak.dtype, torch.float32)), dim=1)
    max_prob, pseudo_labels = probs.max(dim=1)
    return pseudo_labels, max_prob >= threshold, max_prob


def fixmatch_unlabeled_loss(
    logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float = 0.95
) -> torch.Tensor:
    """FixMatch unlabeled loss (Sohn et al. 2020, Eq. 4).

    ``(1 / B) * sum_b 1[max(p_b) >= threshold] * CE(argmax(p_b), logits_strong_b)`` with
    ``p_b = softmax(logits_weak_b)`` treated as a constant: averaged over ALL ``B`` unlabeled
    samples, masked ones counting as zero.
    """
    _check_2d(logits_strong, "logits_strong")
    if logits_weak.shape != logits_strong.shape:
        raise ConfigError(
            f"logits_weak {tuple(logits_weak.shape)} and logits_strong "
            f"{tuple(logits_strong.shape)} must have the same shape."
        )
    pseudo_labels, mask, _ = fixmatch_pseudo_labels(logits_weak, threshold)
    ce = F.cross_entropy(logits_strong, pseudo_labels, reduction="none")
    return _masked_mean_over_all(ce, mask)


def pseudo_label_loss(logits: torch.Tensor, threshold: float = 0.95) -> torch.Tensor:
    """Pseudo-Label (Lee 2013) with a confidence threshold, as in the USB/FixMatch baselines.

    Hard labels ``argmax softmax(logits)`` of the *same* logits (detached); cross-entropy on the
    samples whose max probability is ``>= threshold``; mean over all samples (masked ones are zero).
    """
    pseudo_labels, mask, _ = fixmatch_pseudo_labels(logits, threshold)
    ce = F.cross_entropy(logits, pseudo_labels, reduction="none")
    return _masked_mean_over_all(ce, mask)


def softmax_mse_loss(
    logits: torch.Tensor, target: torch.Tensor, target_is_probs: bool = False
) -> torch.Tensor:
    """Consistency loss of the Pi-Model / Mean Teacher (Laine & Aila 2017; Tarvainen & Valpola
    2017).

    ``mean over batch and classes of (softmax(logits) - q) ** 2`` with ``q = softmax(target)``
    (or ``q = target`` when ``target_is_probs``), detached.
    """
    _check_2d(logits)
    if target.shape != logits.shape:
        raise ConfigError(
            f"target {tuple(target.shape)} must have the shape of logits {tuple(logits.shape)}."
        )
    q = target.detach() if target_is_probs else torch.softmax(target.detach(), dim=1)
    return ((torch.softmax(logits, dim=1) - q) ** 2).mean()


def kl_div_from_logits(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``mean_b KL(softmax(target_logits_b) || softmax(logits_b))``, target detached (VAT, Miyato et
    al. 2018, Eq. 2 / Eq. 5)."""
    _check_2d(logits)
    if target_logits.shape != logits.shape:
        raise ConfigError(
            f"target_logits {tuple(target_logits.shape)} must have the shape of logits "
            f"{tuple(logits.shape)}."
        )
    log_p = torch.log_softmax(target_logits.detach(), dim=1)
    log_q = torch.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean prediction entropy ``mean_b -sum_k p_bk log p_bk`` (entropy minimisation in VAT+EntMin,
    Grandvalet & Bengio 2005)."""
    _check_2d(logits)
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def uda_unlabeled_loss(
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    temperature: float = 0.4,
    threshold: float = 0.8,
) -> torch.Tensor:
    """UDA consistency loss (Xie et al. 2020, Sec. 3.2, sharpening + confidence masking).

    Target ``t_b = softmax(logits_weak_b / temperature)`` (detached); mask
    ``max softmax(logits_weak_b) >= threshold``; per sample ``KL(t_b || softmax(logits_strong_b))``;
    mean over ALL samples (masked ones count as zero).
    """
    _check_2d(logits_strong, "logits_strong")
    if logits_weak.shape != logits_strong.shape:
        raise ConfigError("logits_weak and logits_strong must have the same shape.")
    if temperature <= 0:
        raise ConfigError(f"UDA temperature must be positive, got {temperature}.")
    weak = logits_weak.detach()
    log_t = torch.log_softmax(weak / temperature, dim=1)
    mask = torch.softmax(weak, dim=1).max(dim=1).values >= threshold
    log_q = torch.log_softmax(logits_strong, dim=1)
    kl = (log_t.exp() * (log_t - log_q)).sum(dim=1)
    return _masked_mean_over_all(kl, mask)


def tsa_mask(logits: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool mask of the labeled samples TSA keeps: ``softmax(logits)[b, y_b] < threshold``."""
    _check_2d(logits)
    with torch.no_grad():
        correct = torch.softmax(logits.detach(), dim=1).gather(1, targets.long().view(-1, 1))
    return correct.view(-1) < threshold


# --------------------------------------------------------------------------------------------
# MixMatch
# --------------------------------------------------------------------------------------------


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """MixMatch sharpening (Berthelot et al. 2019, Eq. 7): ``p_k^(1/T) / sum_j p_j^(1/T)``.

    Each row is first divided by its maximum (a factor that cancels in the ratio) so that small
    temperatures cannot underflow every entry to zero.
    """
    if temperature <= 0:
        raise ConfigError(f"sharpen temperature must be positive, got {temperature}.")
    scaled = probs / probs.max(dim=-1, keepdim=True).values
    powered = scaled ** (1.0 / temperature)
    return powered / powered.sum(dim=-1, keepdim=True)


def mixmatch_unlabeled_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MixMatch unlabeled loss (Berthelot et al. 2019, Eq. 5): mean over batch AND classes of
    ``(probs - targets) ** 2`` (targets: guessed labels, normally computed without gradient)."""
    if probs.shape != targets.shape:
        raise ConfigError(
            f"probs {tuple(probs.shape)} and targets {tuple(targets.shape)} must have the same "
            "shape."
        )
    return ((probs - targets) ** 2).mean()


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    generator: Optional[torch.Generator] = None,
    keep_larger: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """Mix-up (Zhang et al. 2018) with MixMatch's ``lambda' = max(lambda, 1 - lambda)`` (Eq. 8-11).

    ``lambda ~ Beta(alpha, alpha)``; ``perm`` a random permutation of the batch;
    ``x_mixed = lambda x + (1 - lambda) x[perm]`` and likewise for the soft targets ``y``.
    Returns ``(x_mixed, y_mixed, lambda, perm)``. All randomness comes from ``generator`` (or the
    global torch RNG when ``None``): lambda is drawn with numpy seeded by a torch draw.
    """
    if alpha <= 0:
        raise ConfigError(f"mixup alpha must be positive, got {alpha}.")
    if not y.is_floating_point():
        raise ConfigError(
            "mixup targets y must be float probabilities: one-hot encode class labels."
        )
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x and y have different batch sizes ({x.shape[0]} vs {y.shape[0]}).")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    if keep_larger:
        lam = max(lam, 1.0 - lam)
    perm = torch.randperm(x.shape[0], generator=generator, device=gen_device).to(x.device)
    x_mixed = lam * x + (1.0 - lam) * x[perm]
    y_mixed = lam * y + (1.0 - lam) * y[perm.to(y.device)]
    return x_mixed, y_mixed, lam, perm


# --------------------------------------------------------------------------------------------
# Contrastive (SimCLR; DBD stage 1)
# --------------------------------------------------------------------------------------------


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, Eq. 1), symmetric over all ``2N`` anchors.

    With ``z = normalise([z1; z2])`` and ``s_ij = z_i . z_j / temperature`` (cosine similarity),
    ``l(i) = -log(exp(s_{i,pos(i)}) / sum_{k != i} exp(s_ik))`` where ``pos(i)`` is ``i``'s pair in
    the other view; the loss is the mean of ``l`` over the ``2N`` anchors. Each anchor's
    denominator holds its positive and the ``2N - 2`` negatives.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ConfigError(
            f"z1 and z2 must be [N, D] tensors of one shape, got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}."
        )
    if temperature <= 0:
        raise ConfigError(f"NT-Xent temperature must be positive, got {temperature}.")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.t() / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    idx = torch.arange(n, device=z.device)
    positives = torch.cat([idx + n, idx])
    return F.cross_entropy(sim, positives)


# --------------------------------------------------------------------------------------------
# Noise-robust losses (DBD stage 2)
# --------------------------------------------------------------------------------------------


def _reverse_cross_entropy(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample RCE ``-sum_k p_k log(clamp(onehot_k, 1e-4, 1))`` (Wang et al. 2019, Eq. 5)."""
    one_hot = F.one_hot(targets.long(), probs.shape[1]).to(probs.dtype)
    return -(probs * torch.log(one_hot.clamp(min=RCE_LABEL_CLAMP, max=1.0))).sum(dim=1)


def symmetric_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.1,
    beta: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Symmetric cross entropy (Wang et al., ICCV 2019, Eq. 6): ``alpha * CE + beta * RCE``.

    ``RCE = -sum_k p_k log q_k`` with ``p = softmax(logits)`` and ``q`` the one-hot label clamped to
    ``[1e-4, 1]``, i.e. ``log 0`` replaced by ``log 1e-4`` (so RCE ``= -log(1e-4) (1 - p_y)``).
    ``reduction='none'`` gives per-sample losses (DBD ranks samples by them).
    """
    _check_2d(logits)
    ce = F.cross_entropy(logits, targets.long(), reduction="none")
    rce = _reverse_cross_entropy(torch.softmax(logits, dim=1), targets)
    return _reduce(alpha * ce + beta * rce, reduction)


def generalized_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, q: float = 0.7, reduction: str = "mean"
) -> torch.Tensor:
    """Generalized cross entropy (Zhang & Sabuncu 2018, Eq. 6): ``(1 - p_y^q) / q``, ``0 < q <= 1``
    (``q -> 0`` recovers CE, ``q = 1`` is MAE up to a factor)."""
    _check_2d(logits)
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"GCE q must be in (0, 1], got {q}.")
    p_y = torch.softmax(logits, dim=1).gather(1, targets.long().view(-1, 1)).view(-1)
    return _reduce((1.0 - p_y**q) / q, reduction)


def active_passive_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Active Passive Loss NCE+RCE (Ma et al., ICML 2020): ``alpha * NCE + beta * RCE``.

    ``NCE = log p_y / sum_k log p_k`` (normalised CE, Eq. 3); RCE as in
    ``symmetric_cross_entropy`` (``log 0`` of the label replaced by ``log 1e-4``).
    """
    _check_2d(logits)
    log_p = torch.log_softmax(logits, dim=1)
    nce = log_p.gather(1, targets.long().view(-1, 1)).view(-1) / log_p.sum(dim=1)
    rce = _reverse_cross_entropy(log_p.exp(), targets)
    return _reduce(alpha * nce + beta * rce, reduction)


# --------------------------------------------------------------------------------------------
# Backdoor Invalidator
# --------------------------------------------------------------------------------------------


def complementary_loss(
    logits: torch.Tensor, complementary_mask: torch.Tensor, transition: torch.Tensor
) -> torch.Tensor:
    """Complementary loss with forward correction of the Backdoor Invalidator (paper 001, Sec. 4.2).

    Our reconstruction from the authors' code (see papers/INDEX.md): ``q = softmax(logits) @ T``
    with the ``C x C`` transition matrix ``T``; ``complementary_mask`` is a bool ``[B, C]``
    multi-hot of the classes marked "not this class"; the loss is
    ``-(sum of log(max(q, 1e-12)) over the marked entries) / max(1, number marked)``.
    The mask must be boolean: the authors indexed with an integer tensor, which selected rows 0
    and 1 instead of the marked entries.
    """
    _check_2d(logits)
    if complementary_mask.dtype != torch.bool:
        raise ConfigError(
            f"complementary_mask must be a bool tensor, got {complementary_mask.dtype}: "
            "convert it with mask.bool() (an integer mask indexes rows, not entries)."
        )
    if complementary_mask.shape != logits.shape:
        raise ConfigError(
            f"complementary_mask {tuple(complementary_mask.shape)} must have the shape of logits "
            f"{tuple(logits.shape)}."
        )
    c = logits.shape[1]
    if transition.shape != (c, c):
        raise ConfigError(f"transition must be a {c}x{c} matrix, got {tuple(transition.shape)}.")
    q = torch.softmax(logits, dim=1) @ transition.to(dtype=logits.dtype, device=logits.device)
    log_q = torch.log(q.clamp(min=COMPLEMENTARY_EPS))
    marked = torch.where(complementary_mask, log_q, torch.zeros_like(log_q)).sum()
    return -marked / complementary_mask.sum().clamp(min=1).to(log_q.dtype)
