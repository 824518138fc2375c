"""Model zoo: parameter counts, shapes, features, heads, normalisation, Grad-CAM layer, registry."""

import pytest
import torch
from torch import nn

from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.models import (
    ARCHS,
    Classifier,
    build_model,
    resnet18,
    tiny_cnn,
    vgg16,
    wide_resnet,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the CI machine is small and shared; oversubscription is slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_param_counts():
    assert 1.4e6 <= n_params(wide_resnet(28, 2, num_classes=10)) <= 1.55e6
    assert n_params(build_model("wrn28_2", 10)) == 1_467_610  # FixMatch WRN-28-2
    assert 23.0e6 <= n_params(build_model("wrn28_8", 100)) <= 23.8e6
    assert 11.1e6 <= n_params(resnet18(10)) <= 11.3e6
    assert 14.6e6 <= n_params(vgg16(10)) <= 14.8e6
    assert n_params(tiny_cnn(10)) < 50_000


FEATURE_DIM = {"wrn28_2": 128, "wrn28_8": 512, "wide_resnet": 128, "resnet18": 512, "vgg16": 512,
               "tiny_cnn": 64}


@pytest.mark.parametrize("arch", ["wrn28_2", "resnet18", "vgg16", "tiny_cnn"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_shapes_features_and_head(arch, in_channels):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, in_channels=in_channels).eval()
    assert isinstance(model, Classifier)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    assert model.feature_dim == FEATURE_DIM[arch] == model.head.in_features
    sizes = (8, 16, 32) if arch == "tiny_cnn" else (8, 16)
    with torch.no_grad():
        for size in sizes:
            x = torch.rand(2, in_channels, size, size)
            feats = model.features(x)
            assert feats.shape == (2, FEATURE_DIM[arch])
            assert model(x).shape == (2, 7)
            # Normalisation lives inside the model.
            manual = model.head(model.backbone((x - model.mean) / model.std))
            torch.testing.assert_close(model(x), manual)


def test_wrn28_8_features_dim():
    model = build_model("wrn28_8", 3).eval()
    with torch.no_grad():
        assert model.features(torch.rand(1, 3, 8, 8)).shape == (1, 512)


@pytest.mark.parametrize("arch", ["wrn28_2", "resnet18", "vgg16", "tiny_cnn"])
def test_last_conv_is_the_pooled_feature_map(arch):
    torch.manual_seed(1)
    model = build_model(arch, 10).eval()
    grabbed = {}
    last = model.backbone.last_conv
    handle = last.register_forward_hook(lambda m, i, o: grabbed.setdefault("o", o))
    x = torch.rand(2, 3, 32 if arch == "vgg16" else 16, 32 if arch == "vgg16" else 16)
    with torch.no_grad():
        feats = model.features(x)
    handle.remove()
    fmap = grabbed["o"]
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, model.feature_dim) and fmap.shape[-1] >= 2
    torch.testing.assert_close(model.backbone.pool(fmap), feats)
    # The pool has no parameters, and last_conv is not registered twice in the state dict.
    assert n_params(model.backbone.pool) == 0
    keys = list(model.state_dict())
    assert not any(k.startswith("backbone.last_conv") for k in keys)


def test_gradients_reach_last_conv_for_gradcam():
    model = tiny_cnn(4, in_channels=1).eval()
    grads = {}

    def hook(module, inp, out):
        out.register_hook(lambda g: grads.setdefault("g", g))

    model.backbone.last_conv.register_forward_hook(hook)
    model(torch.rand(3, 1, 12, 12))[:, 2].sum().backward()
    assert grads["g"].shape == (3, 64, 3, 3) and grads["g"].abs().sum() > 0


def test_wrn_train_mode_bn_and_dropout():
    model = wide_resnet(10, 1, num_classes=3, dropout=0.3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.001 for m in bns)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.1 for m in acts)
    model.train()
    out = model(torch.rand(4, 3, 8, 8))
    assert out.shape == (4, 3) and torch.isfinite(out).all()


def test_custom_mean_std_and_errors():
    model = tiny_cnn(2, in_channels=2, mean=(0.1, 0.2), std=(0.3, 0.4))
    torch.testing.assert_close(model.mean.view(-1), torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(model.std.view(-1), torch.tensor([0.3, 0.4]))
    one = tiny_cnn(2, in_channels=1)
    assert one.mean.numel() == 1 and one.std.numel() == 1
    with pytest.raises(ConfigError):
        tiny_cnn(2, in_channels=1, mean=(0.1, 0.2, 0.3))
    with pytest.raises(ConfigError):
        wide_resnet(depth=27)


def test_registry():
    assert set(ARCHS) == {"wrn28_2", "wrn28_8", "wide_resnet", "resnet18", "vgg16", "tiny_cnn"}
    with pytest.raises(ConfigError) as err:
        build_model("resnet999", 10)
    for name in ARCHS:
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        build_model("tiny_cnn", 10, depth=3)
    model = build_model("wide_resnet", 5, in_channels=1, depth=10, widen_factor=1)
    assert model.feature_dim == 64 and model.head.out_features == 5
    assert build_model("tiny_cnn", 3, width=4).feature_dim == 16


@pytest.mark.parametrize("in_planes,out_planes,stride,abr", [(8, 8, 1, False), (8, 8, 1, True),
                                                             (4, 8, 2, False), (4, 8, 1, True)])
def test_wide_block_matches_manual_preactivation(in_planes, out_planes, stride, abr):
    from lightning_ssl_backdoor.models.wideresnet import _WideBasicBlock

    torch.manual_seed(3)
    block = _WideBasicBlock(in_planes, out_planes, stride, 0.0, 0.001, 0.1, abr).eval()
    for bn in (block.bn1, block.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, in_planes, 6, 6)

    def bn_act(bn, t):
        var = bn.running_var.view(1, -1, 1, 1)
        y = (t - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(var + bn.eps)
        y = y * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        return torch.where(y > 0, y, 0.1 * y)

    a = bn_act(block.bn1, x)
    h = torch.nn.functional.conv2d(a, block.conv1.weight, stride=stride, padding=1)
    h = torch.nn.functional.conv2d(bn_act(block.bn2, h), block.conv2.weight, padding=1)
    res = a if abr else x
    if in_planes != out_planes or stride != 1:
        res = torch.nn.functional.conv2d(res, block.shortcut.weight, stride=stride)
    with torch.no_grad():
        torch.testing.assert_close(block(x), res + h, rtol=1e-5, atol=1e-5)
