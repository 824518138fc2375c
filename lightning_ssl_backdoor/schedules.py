"""Schedules of the SSL losses: ramp-up / ramp-down weights and UDA's training-signal annealing.

Pure functions of the step; re-exported by :mod:`lightning_ssl_backdoor.losses`.
"""

from __future__ import annotations

import math

from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["cosine_rampdown", "linear_rampup", "sigmoid_rampup", "tsa_threshold"]


def tsa_threshold(schedule: str, step: int, total_steps: int, num_classes: int) -> float:
    """Training Signal Annealing threshold (UDA, Xie et al. 2020, Sec. 3.3).

    ``eta_t = alpha_t * (1 - 1/K) + 1/K`` with ``t = clip(step / total_steps, 0, 1)`` and
    ``alpha_t = t`` ('linear'), ``1 - exp(-5 t)`` ('log'), ``exp(5 (t - 1))`` ('exp').
    """
    if total_steps <= 0:
        raise ConfigError(f"total_steps must be positive, got {total_steps}.")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}.")
    t = min(max(step / total_steps, 0.0), 1.0)
    if schedule == "linear":
        alpha = t
    elif schedule == "log":
        alpha = 1.0 - math.exp(-5.0 * t)
    elif schedule == "exp":
        alpha = math.exp(5.0 * (t - 1.0))
    else:
        raise ConfigError(f"TSA schedule must be 'linear', 'log' or 'exp', got {schedule!r}.")
    return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def _progress(step: float, length: float) -> float:
    if length < 0:
        raise ConfigError(f"ramp length must be non-negative, got {length}.")
    if length == 0:
        return 1.0
    return min(max(float(step) / float(length), 0.0), 1.0)


def linear_rampup(step: float, length: float) -> float:
    """``clip(step / length, 0, 1)`` (1.0 when ``length == 0``); MixMatch's lambda_u ramp."""
    return _progress(step, length)


def sigmoid_rampup(step: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)``, ``t = clip(step / length, 0, 1)`` (Laine & Aila 2017; Mean Teacher);
    1.0 when ``length == 0``."""
    if length == 0:
        return 1.0
    t = _progress(step, length)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def cosine_rampdown(step: float, length: float) -> float:
    """``0.5 (cos(pi t) + 1)``, ``t = clip(step / length, 0, 1)`` (Loshchilov & Hutter 2017, as used
    by Mean Teacher); goes from 1 to 0; 0.0 when ``length == 0``."""
    t = _progress(step, length)
    return float(0.5 * (math.cos(math.pi * t) + 1.0))
