"""Your own model: SSL modules, a defense stage and the surrogate take an nn.Module (or a
class_path mapping) following models/interface.py; wrap_backbone wraps a plain backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_ssl_backdoor._lightning import pl
from lightning_ssl_backdoor.attacks.surrogate import load_surrogate, save_surrogate, train_surrogate
from lightning_ssl_backdoor.data import SSLDataModule, make_split
from lightning_ssl_backdoor.defenses import DEFENSES, DefenseContext, cluster_detect
from lightning_ssl_backdoor.defenses.baselines import FinePruning, FineTuning, NeuralAttentionDistillation, fine_prune, nad_distill
from lightning_ssl_backdoor.defenses.dbd import DBD, LinearHead
from lightning_ssl_backdoor.defenses.depud import target_layer
from lightning_ssl_backdoor.errors import ArtifactError, ConfigError
from lightning_ssl_backdoor.models import (MEMBERS, Classifier, build_model, check_model, instantiate, last_conv_of,
                                           wrap_backbone)
from lightning_ssl_backdoor.spec import DataConfig, Spec, TrainerConfig
from lightning_ssl_backdoor.ssl import FixMatch, Supervised
from tests.conftest import random_imageset

HERE = __name__  # the class_path prefix of the classes below


class TinyNet(nn.Module):
    """Written against the interface, not a Classifier: features, head, num_classes; it
    normalises inside (x in [0, 1] -> [-1, 1])."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PlainBackbone(nn.Module):
    """Just images -> vectors, as most third-party backbones are."""

    def __init__(self, width: int = 5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def split():
    return make_split(random_imageset(48, seed=0), random_imageset(12, seed=1), labels_per_class=4, seed=0)


def _trainer(tmp_path, steps=3, **kw):
    return pl.Trainer(max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None, accelerator="cpu",
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kw)


def _changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def test_fixmatch_trains_own_model_and_clustering_reads_its_features(tmp_path, split):
    pl.seed_everything(0)
    net = TinyNet(3)
    m = FixMatch(model=net, num_classes=3, weak_pad=1)
    assert m.model is net and isinstance(m.ema_model, TinyNet) and m.ema_model is not net
    before = [p.detach().clone() for p in net.parameters()]
    trainer = _trainer(tmp_path)
    trainer.fit(m, datamodule=SSLDataModule(split=split, batch_size=4, mu=2, eval_batch_size=12))
    assert trainer.global_step == 3 and any(_changed(before, net))
    assert "val/acc" in trainer.callback_metrics and "train/mask_rate" in trainer.callback_metrics
    # the clustering defense's feature space: the model's features of the unlabeled images
    with torch.no_grad():
        feats = net.eval().features(split.unlabeled.images.float() / 255)
    result = cluster_detect(features=feats, n_neighbors=4, min_cluster_size=3, pca_dim=None)
    assert feats.shape == (len(split.unlabeled), 4) and result.scores.shape == (len(split.unlabeled),)


def test_dbd_linear_head_trains_only_the_head_of_a_wrapped_backbone(tmp_path, split):
    pl.seed_everything(0)
    model = wrap_backbone(PlainBackbone(5), num_classes=3, feature_dim=5, mean=0.5, std=0.25)
    assert isinstance(model, Classifier) and model.feature_dim == 5 and model.num_classes == 3
    m = LinearHead(model=model, num_classes=3, weak_pad=1)
    backbone_before = [p.detach().clone() for p in model.backbone.parameters()]
    head_before = [p.detach().clone() for p in model.head.parameters()]
    _trainer(tmp_path).fit(m, datamodule=SSLDataModule(split=split, batch_size=4, mu=0, eval_batch_size=12))
    assert not any(_changed(backbone_before, model.backbone)) and all(_changed(head_before, model.head))


def test_wrap_backbone_normalises_inside_and_reads_feature_dim():
    bb = PlainBackbone(5)
    x = torch.rand(2, 3, 6, 6)
    plain = wrap_backbone(bb, 4, feature_dim=5)  # no statistics: the backbone sees [0, 1] as is
    assert torch.allclose(plain.features(x), bb(x))
    normed = wrap_backbone(bb, 4, feature_dim=5, mean=[0.5, 0.4, 0.3], std=0.2)
    ref = bb((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)
    assert torch.allclose(normed.features(x), ref, atol=1e-6)
    assert torch.allclose(normed(x), normed.head(ref), atol=1e-6)
    bb.feature_dim = 5
    assert wrap_backbone(bb, 2).feature_dim == 5
    with pytest.raises(ConfigError, match="pass feature_dim"):
        wrap_backbone(PlainBackbone(), 2)
    with pytest.raises(ConfigError, match="mean and std together"):
        wrap_backbone(bb, 2, mean=0.5)


def test_class_path_mapping_builds_the_model_and_survives_a_checkpoint(tmp_path, split):
    spec = {"class_path": f"{HERE}.TinyNet", "init_args": {"num_classes": 3, "width": 6}}
    m = Supervised(model=spec, num_classes=3, weak_pad=1)
    assert isinstance(m.model, TinyNet) and m.model.head.in_features == 6
    assert m.hparams["model"] == spec
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit(m, datamodule=SSLDataModule(split=split, batch_size=4, mu=0, eval_batch_size=12))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    back = Supervised.load_from_checkpoint(ckpt)
    assert isinstance(back.model, TinyNet)
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), m.model.state_dict().values()))
    # nested: a Classifier around a backbone, both by class_path
    nested = instantiate({"class_path": "lightning_ssl_backdoor.models.Classifier",
                          "init_args": {"backbone": {"class_path": f"{HERE}.PlainBackbone", "init_args": {"width": 3}},
                                        "feature_dim": 3, "num_classes": 2}})
    assert isinstance(nested.backbone, PlainBackbone) and check_model(nested, 2) is nested


def test_model_instance_is_not_pickled_into_the_checkpoint(tmp_path, split):
    m = Supervised(model=TinyNet(3), num_classes=3, weak_pad=1)
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit(m, datamodule=SSLDataModule(split=split, batch_size=4, mu=0, eval_batch_size=12))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["model"] == f"instance of {HERE}.TinyNet"
    with pytest.raises(ConfigError, match="needs it again"):
        Supervised.load_from_checkpoint(ckpt)
    back = Supervised.load_from_checkpoint(ckpt, model=TinyNet(3))
    assert torch.equal(back.model.head.weight, m.model.head.weight)


def test_interface_violations_are_one_sentence():
    class NoFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 3)

    class ConvHead(TinyNet):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(4, 3, 1)

    with pytest.raises(ConfigError, match="no features"):
        FixMatch(model=NoFeatures(), num_classes=3)
    with pytest.raises(ConfigError, match="head must be the last nn.Linear"):
        FixMatch(model=ConvHead(), num_classes=3)
    with pytest.raises(ConfigError, match="needs num_classes=10"):
        FixMatch(model=TinyNet(3), num_classes=10)
    with pytest.raises(ConfigError, match="model_kwargs"):
        FixMatch(model=TinyNet(3), num_classes=3, model_kwargs={"width": 8})
    with pytest.raises(ConfigError, match="explicit class_path"):
        FixMatch(model={"arch": "tiny_cnn"}, num_classes=3)
    with pytest.raises(ConfigError, match="cannot import"):
        FixMatch(model={"class_path": "no_such_package.Net"}, num_classes=3)
    with pytest.raises(ConfigError, match="not name an nn.Module"):
        FixMatch(model={"class_path": "collections.OrderedDict"}, num_classes=3)
    with pytest.raises(ConfigError, match="not name an nn.Module"):  # never called
        FixMatch(model={"class_path": "os.system", "init_args": {"command": "false"}}, num_classes=3)
    with pytest.raises(ConfigError, match="does not accept init_args"):
        FixMatch(model={"class_path": f"{HERE}.TinyNet", "init_args": {"depth": 3}}, num_classes=3)
    with pytest.raises(ConfigError, match="nn.Module or a"):
        FixMatch(model=42, num_classes=3)


def test_surrogate_trains_own_model_instance_and_class_path(tmp_path, split):
    net = TinyNet(3)
    before = [p.detach().clone() for p in net.parameters()]
    out = train_surrogate(split.labeled, model=net, steps=3, batch_size=4, progress=False)
    assert out is net and not out.training and any(_changed(before, net))
    path = save_surrogate(out, tmp_path / "inst.safetensors")
    with pytest.raises(ArtifactError, match="pass that model"):
        load_surrogate(path)
    back = load_surrogate(path, model=TinyNet(3))
    assert torch.equal(back.head.weight, net.head.weight)

    spec = {"class_path": f"{HERE}.TinyNet", "init_args": {"num_classes": 3, "width": 5}}
    a = train_surrogate(split.labeled, model=spec, steps=2, batch_size=4, seed=1, progress=False)
    b = train_surrogate(split.labeled, model=spec, steps=2, batch_size=4, seed=1, progress=False)
    assert torch.equal(a.head.weight, b.head.weight)  # built and trained under the seed
    back = load_surrogate(save_surrogate(a, tmp_path / "spec.safetensors"))
    assert isinstance(back, TinyNet) and torch.equal(back.head.weight, a.head.weight)


def test_architecture_files_do_not_import_the_registry():
    """registry -> architectures, never the reverse (the old import circle)."""
    from pathlib import Path

    import lightning_ssl_backdoor.models as models

    folder = Path(models.__file__).parent
    for name in ("resnet.py", "tiny.py", "vgg.py", "wideresnet.py", "classifier.py", "weights.py"):
        assert "models.registry" not in (folder / name).read_text(), name
    assert set(models.ARCHS) == set(models.BUILDERS)


def test_runner_dbd_and_surrogate_use_a_rows_own_model(tmp_path):
    """A row's ``model: {class_path: ...}`` reaches every DBD stage through the runner, and the
    attacker's surrogate takes one too (``surrogate: {model: ...}``)."""
    import json

    import yaml

    from lightning_ssl_backdoor.cli import main

    # DBD moves the backbone between its stages: a Classifier around a plain backbone, by class_path
    own = {"class_path": "lightning_ssl_backdoor.models.Classifier",
           "init_args": {"backbone": {"class_path": f"{HERE}.PlainBackbone", "init_args": {"width": 5}},
                         "feature_dim": 5, "num_classes": 10}}
    cfg = {
        "name": "own_model_dbd", "seeds": [0],
        "data": {"dataset": "digits", "image_size": 8, "channels": 3, "labels_per_class": 6, "num_unlabeled": 60,
                 "batch_size": 8, "mu": 1, "eval_batch_size": 500},
        "model": {"model": own, "weak_pad": 1, "ema_decay": 0.9},
        "trainer": {"max_steps": 2, "val_check_interval": 2, "accelerator": "cpu"},
        "surrogate": {"model": own, "steps": 2, "batch_size": 8},
        "warm_start": "surrogate",
        "algorithms": ["mixmatch"],
        "attacks": [{"name": "badnets", "init_args": {"target": 3, "budget_rate": 0.1}}],
        "defenses": [{"name": "dbd", "init_args": {"simclr": {"steps": 2, "batch_size": 16},
                                                   "linear": {"steps": 2, "batch_size": 8},
                                                   "finetune": {"steps": 2, "batch_size": 8}}}],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["defense"] == "dbd" and 0 <= row["clean_accuracy"] <= 100
    for stage in ("stage1", "stage2", "stage3"):  # every stage trained the row's own backbone
        weights = torch.load(Path(row["defense_info"][stage]["folder"]) / "model.pt", weights_only=True)
        assert any(k.startswith("backbone.net.0.") for k in weights), stage
    surrogate = load_surrogate(next((out / "cache").glob("surrogate-*/surrogate.safetensors")))
    assert isinstance(surrogate.backbone, PlainBackbone)


def test_poison_command_trains_the_surrogate_from_a_class_path(tmp_path):
    from lightning_ssl_backdoor.attacks.cli import poison_main

    own = ("{model: {class_path: lightning_ssl_backdoor.models.Classifier, init_args: {backbone: "
           f"{{class_path: {HERE}.PlainBackbone, init_args: {{width: 5}}}}, feature_dim: 5, num_classes: 10}}}}, "
           "steps: 2}")
    out = tmp_path / "p.npz"
    assert poison_main(["--attack", "{name: deneb, target: 1, budget: 2, steps: 2, trigger: {name: deneb, size: 2, margin: 1}}",
                        "--data.image_size", "8", "--data.labels_per_class", "3", "--data.options", "{channels: 3}",
                        "--surrogate", own, "--output", str(out), "--progress", "false"]) == 0
    surrogate = load_surrogate(next((tmp_path / ".p.work").glob("surrogate_*.safetensors")))
    assert isinstance(surrogate.backbone, PlainBackbone) and out.is_file()


# ------------------------------------------- defenses on a model of one's own (issue 31, item 7)
def _convnet(widths=(6,)):
    """A plain conv backbone: conv/ReLU blocks, pooled to [B, widths[-1]]."""
    layers, c = [], 3
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _xy(n=12):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8), torch.arange(n) % 3


def test_fine_prune_names_the_missing_last_conv_and_wrap_backbone_supplies_it():
    x, y = _xy()
    with pytest.raises(ConfigError, match=r"^fine_prune needs a last_conv module.*TinyNet lacks \(its conv layers end "
                                          r"with body\.0\): .*wrap_backbone\(net, num_classes, last_conv="):
        fine_prune(TinyNet(3), x, y, ft_steps=0)
    wrapped = wrap_backbone(_convnet(), 3, feature_dim=6)
    assert wrapped.last_conv is wrapped.backbone[0]  # found: the last Conv2d with feature_dim channels
    repaired, info = fine_prune(wrapped, x, y, ft_steps=1, batch_size=4)
    assert info["num_channels"] == 6 and repaired is not wrapped


def test_wrap_backbone_satisfies_every_registered_defense_and_a_bare_model_is_told_what_to_add():
    wrapped = wrap_backbone(_convnet(), 3, feature_dim=6)
    bare = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))  # forward only
    needing = set()
    for name, cls in sorted(DEFENSES.items()):
        defense = cls()
        assert set(defense.requires) <= set(MEMBERS), name
        assert defense.check_model(wrapped) is wrapped
        if defense.requires:
            needing.add(name)
            first = defense.requires[0]
            with pytest.raises(ConfigError, match=rf"^defense '{name}' \(\w+\) needs .*Sequential lacks.*wrap_backbone"):
                defense.check_model(bare)
            assert MEMBERS[first][0] in _message(defense, bare)
        else:
            assert defense.check_model(bare) is bare  # forward is enough
    assert {"fp", "nad", "spectral", "activation_clustering", "dbd"} <= needing
    assert "upure" not in needing and "ft" not in needing


def _message(defense, model):
    with pytest.raises(ConfigError) as e:
        defense.check_model(model)
    return str(e.value)


def test_last_conv_is_found_named_or_given_and_never_registered_twice():
    bb = _convnet((4, 6))  # Conv(3->4), ReLU, Conv(4->6), ReLU, pool, flatten
    assert wrap_backbone(bb, 3, feature_dim=6).last_conv is bb[2]
    assert wrap_backbone(bb, 3, feature_dim=6, last_conv="0").last_conv is bb[0]
    assert wrap_backbone(bb, 3, feature_dim=6, last_conv=bb[0]).last_conv is bb[0]
    assert not any(k.startswith("last_conv") for k in wrap_backbone(bb, 3, feature_dim=6).state_dict())
    with pytest.raises(ConfigError, match="'nope' is not a module of the backbone"):
        wrap_backbone(bb, 3, feature_dim=6, last_conv="nope")
    with pytest.raises(ConfigError, match="not part of the backbone"):
        wrap_backbone(bb, 3, feature_dim=6, last_conv=nn.Conv2d(1, 1, 1))
    built = build_model("tiny_cnn", num_classes=3, width=2)
    assert built.last_conv is built.backbone.last_conv and last_conv_of(built) is built.backbone.last_conv
    named = instantiate({"class_path": "lightning_ssl_backdoor.models.Classifier", "init_args": {
        "backbone": {"class_path": f"{HERE}.PlainBackbone"}, "feature_dim": 5, "num_classes": 3, "last_conv": "net.0"}})
    assert named.last_conv is named.backbone.net[0]
    with pytest.raises(ConfigError, match=r"has 4 channels but the head takes 6 features.*last_conv="):
        fine_prune(wrap_backbone(bb, 3, feature_dim=6, last_conv="0"), *_xy(), ft_steps=0)


def test_grad_cam_and_nad_read_the_wrapped_last_conv():
    wrapped = wrap_backbone(_convnet(), 3, feature_dim=6, mean=0.5, std=0.25)
    assert target_layer(wrapped) is wrapped.backbone[0]
    with pytest.raises(ConfigError, match="^Grad-CAM needs a last_conv module"):
        target_layer(TinyNet(3))
    x, y = _xy()
    student = nad_distill(wrapped, x, y, teacher_steps=1, student_steps=1, batch_size=4)
    assert isinstance(student, Classifier) and student is not wrapped
    assert NeuralAttentionDistillation(layers=["backbone.0"]).requires == ()  # every layer named: no last_conv


def test_a_defense_checks_the_rows_own_model_before_anything_trains(tmp_path, split):
    def train_fn(*args, **kwargs):
        raise AssertionError("trained before the model was checked")

    ctx = DefenseContext(split=split, seed=0, algorithm=Spec("fixmatch"), data=DataConfig(), trainer=TrainerConfig(),
                         model_args={"model": {"class_path": f"{HERE}.TinyNet", "init_args": {"num_classes": 3}}},
                         stage_dir=tmp_path, train_fn=train_fn)
    with pytest.raises(ConfigError, match=r"^defense 'fp' \(FinePruning\) needs a last_conv module.*TinyNet lacks"):
        FinePruning().run(ctx)
    with pytest.raises(ConfigError, match=r"^defense 'dbd' \(DBD\) needs a backbone module"):
        DBD().run(ctx)
    with pytest.raises(AssertionError, match="trained before"):  # fine-tuning needs forward only: on to training
        FineTuning().run(ctx)
