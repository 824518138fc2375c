"""A warm-start weights file enters the rows' cache keys by its bytes, not its path: a copied output
folder keeps its cache (the path of its surrogate changes with the folder), a rewritten file does not."""

from __future__ import annotations

import shutil

from lightning_ssl_backdoor.pipeline.experiment import keyed_model_args
from lightning_ssl_backdoor.spec import config_hash


def test_weights_file_is_keyed_by_content_not_path(tmp_path):
    a = tmp_path / "run_a" / "surrogate.safetensors"
    a.parent.mkdir()
    a.write_bytes(b"theta_0 weights")
    b = tmp_path / "run_b" / "surrogate.safetensors"
    b.parent.mkdir()
    shutil.copy(a, b)
    args = {"arch": "tiny_cnn", "lr": 0.03}
    key = lambda p: config_hash("train", keyed_model_args({**args, "init_weights": str(p)}))  # noqa: E731
    assert key(a) == key(b)  # the same weights in another output folder: the same key
    b.write_bytes(b"other weights")
    assert key(a) != key(b)  # rewritten in place: a new key
    assert keyed_model_args(args) is args  # no warm start: the arguments as they are
    assert keyed_model_args({**args, "init_weights": str(a)})["init_weights"].startswith("sha256:")
