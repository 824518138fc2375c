"""The "what was learned" probe (ssl/probe.py, issue 36) against hand-computed rates and losses."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.pipeline.probe_stage import probe_set
from lightning_ssl_backdoor.ssl.probe import LearnedFeatureProbe, ProbeSet, conditioned_asrs, strong_view_target_loss


class CodeModel(nn.Module):
    """Predicts the class written as a grey level in pixel (0, 0, 0): logits -(k - code)^2."""

    def forward(self, x):
        code = x[:, 0, 0, 0] * 255.0
        return -(torch.arange(4.0).view(1, 4) - code.view(-1, 1)) ** 2


def images(codes):
    x = torch.zeros(len(codes), 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor(codes, dtype=torch.uint8)
    return x


def test_conditioned_asrs_hand_computed():
    # labels 0 1 2 0 1, clean predictions 0 1 1 0 2: images 0, 1, 3 are correct (3 eligible)
    probe = ProbeSet(images([0, 1, 1, 0, 2]), torch.tensor([0, 1, 2, 0, 1]),
                     {"trigger": images([3, 3, 3, 0, 3]),        # eligible hits: 0, 1 -> 2/3
                      "perturbation": images([0, 0, 3, 3, 3]),   # eligible hits: 3    -> 1/3
                      "both": images([3, 3, 3, 3, 0])})          # eligible hits: all  -> 3/3
    out = conditioned_asrs(CodeModel(), probe, target=3, chunk=2)
    assert out == {"asr_cond_trigger": 2 / 3, "asr_cond_perturbation": 1 / 3, "asr_cond_both": 1.0, "eligible": 3.0}


def test_strong_view_target_loss_hand_computed():
    ident = lambda x, generator=None: x  # noqa: E731
    # code 3: logits [-9, -4, -1, 0]; code 1: [-1, 0, -1, -4]; CE under target 3 = logsumexp - logit_3
    ce3 = math.log(math.exp(-9) + math.exp(-4) + math.exp(-1) + 1.0)
    ce1 = math.log(math.exp(-1) + 1.0 + math.exp(-1) + math.exp(-4)) + 4.0
    loss = strong_view_target_loss(CodeModel(), images([3, 1]), 3, ident, ident, views=3, chunk=1)
    assert loss == pytest.approx((ce3 + ce1) / 2, abs=1e-6)


def test_step0_survives_checkpoint_and_bad_config_refused():
    probe = ProbeSet(images([0]), torch.tensor([0]), {"trigger": images([3])})
    cb = LearnedFeatureProbe(probe, target=3)
    cb.step0 = {"asr_cond_trigger": 1.0}
    other = LearnedFeatureProbe(probe, target=3)
    other.load_state_dict(cb.state_dict())
    assert other.step0 == {"asr_cond_trigger": 1.0}
    with pytest.raises(ConfigError):
        probe_set(SimpleNamespace(cfg=SimpleNamespace(probe={"images": 8})), 0)
