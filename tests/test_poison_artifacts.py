"""PoisonedSplit artifacts (exact round trip, tamper evidence, no pickles), surrogates, and the
``ssl-backdoor poison`` command (every example config runs; resume gives the same artifact)."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ssl_backdoor.attacks import build_attack
from lightning_ssl_backdoor.attacks import deneb as deneb_module
from lightning_ssl_backdoor.attacks.cli import make_parser, poison_main
from lightning_ssl_backdoor.data.poisoned_io import load_poisoned_split, save_poisoned_split
from lightning_ssl_backdoor.attacks.surrogate import load_surrogate, save_surrogate, train_surrogate
from lightning_ssl_backdoor.data.readers import read_digits
from lightning_ssl_backdoor.data.split import make_split
from lightning_ssl_backdoor.errors import ArtifactError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "attack").glob("*.yaml"))


@pytest.fixture(scope="module")
def split():
    return make_split(read_digits("train", 16), read_digits("test", 16), labels_per_class=8, seed=0,
                      num_unlabeled=200)


@pytest.fixture(scope="module")
def model(split):
    return train_surrogate(split.labeled, steps=20, seed=0, progress=False)


def _assert_same(a, b):
    for name in ("labeled", "unlabeled", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert torch.equal(sa.images, sb.images) and torch.equal(sa.labels, sb.labels)
        assert sa.classes == sb.classes
        assert (sa.true_labels is None) == (sb.true_labels is None)
        if sa.true_labels is not None:
            assert torch.equal(sa.true_labels, sb.true_labels)
    for k in ("labeled_indices", "unlabeled_indices", "labeled_poison_mask", "unlabeled_poison_mask"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    assert a.target == b.target and a.seed == b.seed
    aa, ab = dict(a.attack), dict(b.attack)
    arr_a, arr_b = aa.pop("arrays"), ab.pop("arrays")
    assert aa == ab and sorted(arr_a) == sorted(arr_b)
    for k in arr_a:
        assert arr_a[k].dtype == arr_b[k].dtype and torch.equal(arr_a[k], arr_b[k])
    assert (a.trigger is None) == (b.trigger is None)
    if a.trigger is not None:
        x = torch.rand(3, *a.test.image_shape)
        assert a.trigger.manifest() == b.trigger.manifest() and torch.equal(a.trigger(x), b.trigger(x))


@pytest.mark.parametrize("name,kw", [
    ("deneb", dict(budget=3, steps=3)),
    ("narcissus", dict(budget=2, steps=3)),
    ("wanet", {}),
    ("interpolation", dict(budget=5)),
    ("freq", dict(budget=2)),
    ("blended", dict(injection="append")),
])
def test_round_trip_is_exact(tmp_path, split, model, name, kw):
    ps = build_attack(name, target=2, progress=False, **kw).poison(split, model)
    path = save_poisoned_split(tmp_path / "p.npz", ps)
    _assert_same(ps, load_poisoned_split(path))


def test_one_changed_byte_is_detected(tmp_path, split):
    ps = build_attack("badnets", target=2, trigger={"name": "badnets", "size": 3, "color": "rgb"}).poison(split)
    path = save_poisoned_split(tmp_path / "p.npz", ps)
    mpath = path.with_suffix(".json")
    npz, manifest = path.read_bytes(), mpath.read_bytes()
    rng = np.random.default_rng(0)
    for i in rng.choice(len(manifest), 40, replace=False):  # any byte of the manifest
        bad = bytearray(manifest)
        bad[i] = (bad[i] + 1) % 256
        mpath.write_bytes(bytes(bad))
        with pytest.raises(ArtifactError):
            load_poisoned_split(path)
    mpath.write_bytes(manifest)
    for i in rng.choice(len(npz), 10, replace=False):  # any byte of the archive
        bad = bytearray(npz)
        bad[i] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(ArtifactError):
            load_poisoned_split(path)
    path.write_bytes(npz)
    _assert_same(ps, load_poisoned_split(path))
    # a semantic edit (target) of the manifest inside the archive is also caught, with one sentence
    import zipfile

    from lightning_ssl_backdoor.data.artifacts import MANIFEST_MEMBER

    mpath.unlink()  # the readable copy beside the archive is optional
    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if info.filename == MANIFEST_MEMBER:
                data = data.replace(b'"target": 2', b'"target": 1')
            z.writestr(info, data)
    with pytest.raises(ArtifactError, match="content hash|was modified"):
        load_poisoned_split(path)
    np.savez(path, x=np.zeros(1))  # an array file without its manifest
    with pytest.raises(ArtifactError, match="incomplete"):
        load_poisoned_split(path)


def test_nothing_is_unpickled(tmp_path, split, monkeypatch):
    ps = build_attack("mosaic", target=2, budget=2).poison(split)
    path = save_poisoned_split(tmp_path / "p.npz", ps)
    with open(path, "wb") as fh:  # an archive holding a pickled object array
        np.savez(fh, **{"labeled.images": np.array([{"evil": 1}], dtype=object)})

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    with pytest.raises(ArtifactError):
        load_poisoned_split(path)


def test_surrogate_save_load(tmp_path, split, model):
    p = save_surrogate(model, tmp_path / "s.safetensors")
    m2 = load_surrogate(p)
    x = split.test.float()[:8]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), m2(x))
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ArtifactError):
        load_surrogate(p)


def _fast_overrides(cfg_path: Path, out: Path) -> list:
    cfg = make_parser().parse_args(["-c", str(cfg_path)])
    args = ["-c", str(cfg_path), "--output", str(out), "--progress", "false",
            "--data.num_unlabeled", "200", "--surrogate.steps", "5"]
    if "steps" in cfg.attack:
        args += ["--attack.steps", "2"]
    if cfg.attack["name"] == "deneb":
        args += ["--attack.budget", "3"]
    return args


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_example_config_runs(tmp_path, cfg):
    out = tmp_path / "out.npz"
    assert poison_main(_fast_overrides(cfg, out)) == 0
    ps = load_poisoned_split(out)
    assert ps.attack["num_poisons"] > 0 and ps.attack["run"]["config_hash"]
    assert int(ps.unlabeled_poison_mask.sum() + ps.labeled_poison_mask.sum()) == ps.attack["num_poisons"]


def test_cli_skips_done_work_and_reports_bad_config(tmp_path, capsys):
    cfg = CONFIGS[0]
    out = tmp_path / "o.npz"
    args = _fast_overrides(cfg, out)
    assert poison_main(args) == 0
    stamp = out.stat().st_mtime_ns
    assert poison_main(args) == 0 and out.stat().st_mtime_ns == stamp
    assert "nothing to do" in capsys.readouterr().err
    assert poison_main(args + ["--attack.budgett", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "budgett" in err[-1]
    assert poison_main(["-c", str(cfg), "--output", str(tmp_path / "x.npz"), "--attack.name", "nope"]) == 2


def test_cli_accepts_class_path_and_init_args(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        "data: {name: digits, image_size: 8, labels_per_class: 3, num_unlabeled: 100}\n"
        "attack:\n  class_path: lightning_ssl_backdoor.attacks.MosaicAttack\n"
        "  init_args: {target: 4, budget: 2, seed: 1}\n"
        f"output: {tmp_path / 'm.npz'}\n"
    )
    assert poison_main(["-c", str(cfg), "--progress", "false"]) == 0
    ps = load_poisoned_split(tmp_path / "m.npz")
    assert ps.attack["name"] == "mosaic" and ps.target == 4 and int(ps.unlabeled_poison_mask.sum()) == 2
    assert ps.attack["config"]["seed"] == 1 and ps.trigger.manifest()["name"] == "mosaic"


def test_cli_resumes_after_interruption_to_the_same_result(tmp_path, monkeypatch):
    cfg = next(c for c in CONFIGS if c.stem == "deneb")
    extra = ["--attack.chunk_size", "2"]
    ref = tmp_path / "ref" / "d.npz"
    assert poison_main(_fast_overrides(cfg, ref) + extra) == 0

    real = deneb_module._optimise_chunk
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(deneb_module, "_optimise_chunk", flaky)
    out = tmp_path / "run" / "d.npz"
    assert poison_main(_fast_overrides(cfg, out) + extra) == 130
    assert not out.exists() and not out.with_suffix(".json").exists()
    calls["n"] = 10  # no more interruptions
    assert poison_main(_fast_overrides(cfg, out) + extra) == 0
    assert calls["n"] == 10 + 2  # 3 chunks of 2 images: the first was reused
    a, b = load_poisoned_split(ref), load_poisoned_split(out)
    assert torch.equal(a.unlabeled.images, b.unlabeled.images)
    assert torch.equal(a.attack["arrays"]["w"], b.attack["arrays"]["w"])


def test_write_result_pair_writes_json_and_markdown_side_by_side(tmp_path):
    import json

    from lightning_ssl_backdoor.data.artifacts import write_result_pair

    path = write_result_pair(tmp_path / "bench", {"ms": 1.5}, "| ms |\n|---|\n| 1.5 |\n")
    assert path == tmp_path / "bench.json" and json.loads(path.read_text()) == {"ms": 1.5}
    assert (tmp_path / "bench.md").read_text().startswith("| ms |")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]  # no temporary file left
