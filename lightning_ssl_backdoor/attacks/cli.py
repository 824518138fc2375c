"""``ssl-backdoor poison -c attack.yaml``: run an attack and write a PoisonedSplit artifact.

Config keys (YAML or command line; command-line values override YAML values)::

    data:        # the clean split
      name: digits            # dataset name for load_dataset
      root: null              # folder with the files (not needed for digits)
      image_size: 16
      num_labeled: null       # total labels, or
      labels_per_class: 30    # labels per class (exactly one of the two)
      num_unlabeled: null     # optional cap on the unlabeled pool
      include_labeled_in_unlabeled: false
      seed: 0                 # split seed
      options: {}             # extra reader options (e.g. channels: 3 for RGB digits)
    attack:      # {name: <attack>, ...options}  or  {class_path: ..., init_args: {...}}
      name: deneb
      target: 0
      budget: 64
    surrogate:   # only used by attacks that need a model
      checkpoint: null        # a safetensors file from save_surrogate; else one is trained:
      arch: tiny_cnn
      steps: 500
      lr: 0.03
      batch_size: 64
      seed: 0
      device: null            # "cuda" to use a GPU
    output: poisoned/deneb_digits.npz
    work_dir: null            # default: <output dir>/.<output stem>.work

Resuming: the trained surrogate (``surrogate_<hash of data + surrogate settings>.safetensors``) and
every finished chunk of poisons (``<hash of the whole config>/chunks/``) are checkpointed in the work
folder; rerunning the same command after an interruption reuses
them and gives the same artifact. An artifact whose manifest already records the same config hash
is left as is.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import replace, asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_ssl_backdoor.data.poisoned_io import artifact_meta, save_poisoned_split
from lightning_ssl_backdoor.attacks.registry import attack_class, build_attack_from_spec
from lightning_ssl_backdoor.attacks.surrogate import accuracy, load_surrogate, save_surrogate, train_surrogate
from lightning_ssl_backdoor.data.artifacts import sha256_file
from lightning_ssl_backdoor.data.readers import load_dataset
from lightning_ssl_backdoor.data.split import make_split
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.typed_options import apply_overrides, split_block_overrides, typed_options


@dataclass
class DataConfig:
    name: str = "digits"
    root: Optional[str] = None
    image_size: Optional[int] = None
    num_labeled: Optional[int] = None
    labels_per_class: Optional[int] = None
    num_unlabeled: Optional[int] = None
    include_labeled_in_unlabeled: bool = False
    seed: int = 0
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SurrogateConfig:
    checkpoint: Optional[str] = None
    arch: str = "tiny_cnn"
    steps: int = 500
    lr: float = 0.03
    batch_size: int = 64
    seed: int = 0
    device: Optional[str] = None
    weight_decay: float = 5e-4
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # your own model instead of arch: {class_path: ..., init_args: {...}} (docs/reuse.md)
    model: Optional[Dict[str, Any]] = None


def make_parser():
    parser = ArgumentParser(
        prog="ssl-backdoor poison",
        description="Run an attack on an SSL split and write a PoisonedSplit artifact (npz + JSON manifest).",
        exit_on_error=False,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config file (repeatable).")
    parser.add_argument("--data", type=DataConfig, default=DataConfig(), help="the clean split")
    parser.add_argument("--attack", type=Dict[str, Any], default=None,
                        help="{name: <attack>, ...options} or {class_path: ..., init_args: {...}}")
    parser.add_argument("--surrogate", type=SurrogateConfig, default=SurrogateConfig(),
                        help="checkpoint path or training settings of the surrogate")
    parser.add_argument("--output", type=Optional[str], default=None, help="artifact path (.npz)")
    parser.add_argument("--work_dir", type=Optional[str], default=None, help="checkpoint folder for resuming")
    parser.add_argument("--progress", type=bool, default=True, help="show progress bars")
    return parser


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _log(msg: str) -> None:
    print(f"[poison] {msg}", file=sys.stderr, flush=True)


def _load_split(data: DataConfig):
    num_labeled, per_class = data.num_labeled, data.labels_per_class
    if num_labeled is None and per_class is None:
        raise ConfigError("data needs num_labeled or labels_per_class.")
    train = load_dataset(data.name, "train", root=data.root, image_size=data.image_size, **data.options)
    test = load_dataset(data.name, "test", root=data.root, image_size=data.image_size, **data.options)
    return make_split(train, test, num_labeled=num_labeled, labels_per_class=per_class,
                      include_labeled_in_unlabeled=data.include_labeled_in_unlabeled, seed=data.seed,
                      num_unlabeled=data.num_unlabeled)


def _surrogate(cfg: SurrogateConfig, split, ckpt: Path, progress: bool):
    if cfg.checkpoint:
        _log(f"loading surrogate {cfg.checkpoint}")
        model = load_surrogate(cfg.checkpoint, device=cfg.device)
    else:
        if ckpt.is_file():
            _log(f"resuming: surrogate from {ckpt}")
            model = load_surrogate(ckpt, device=cfg.device)
        else:
            _log(f"training surrogate {cfg.arch} on {len(split.labeled)} labeled images for {cfg.steps} steps")
            model = train_surrogate(split.labeled, arch=cfg.arch, steps=cfg.steps, lr=cfg.lr,
                                    batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device,
                                    weight_decay=cfg.weight_decay, model_kwargs=cfg.model_kwargs,
                                    model=cfg.model, progress=progress)
            save_surrogate(model, ckpt)
    acc = accuracy(model, split.test)
    _log(f"surrogate test accuracy {100 * acc:.2f}%")
    return model, acc


def _plain(obj: Any) -> Any:
    """``obj`` with every jsonargparse Namespace inside turned into a plain dict."""
    if hasattr(obj, "as_dict"):
        obj = obj.as_dict()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def run_poison(data: DataConfig, attack_spec: Dict[str, Any], surrogate: SurrogateConfig, output: str,
               work_dir: Optional[str] = None, progress: bool = True) -> Path:
    """The ``poison`` command as a function: returns the artifact path."""
    if not output:
        raise ConfigError("the config needs an output path (output: path/to/poisoned.npz).")
    out = Path(output)
    if out.suffix != ".npz":
        raise ConfigError(f"output must end in .npz, got {output}.")
    attack = build_attack_from_spec(attack_spec, progress)
    if surrogate.model is not None:  # jsonargparse hands nested class_path mappings as Namespaces
        surrogate = replace(surrogate, model=_plain(surrogate.model))
    sur = asdict(surrogate)
    if attack.needs_model and surrogate.checkpoint:
        if not Path(surrogate.checkpoint).is_file():
            raise ConfigError(f"surrogate checkpoint {surrogate.checkpoint} does not exist; fix the path or drop it to train one.")
        sur = {"checkpoint_sha256": sha256_file(surrogate.checkpoint)}
    sur.pop("device", None)
    if sur.get("model") is None:  # unset: the same hash as before the option existed
        sur.pop("model", None)
    run = {"data": asdict(data), "attack": attack.config(), "surrogate": sur if attack.needs_model else None}
    key = _hash(run)
    meta = artifact_meta(out)
    if meta is not None and (meta.get("attack") or {}).get("run", {}).get("config_hash") == key:
        _log(f"{out} already holds this config (hash {key}); nothing to do")
        return out
    root = Path(work_dir) if work_dir else out.parent / f".{out.stem}.work"
    work = root / key  # created only when something is saved in it (no empty folder on failure)
    # the surrogate depends only on the data and its own settings: shared by every attack config
    sur_ckpt = root / f"surrogate_{_hash({'data': run['data'], 'surrogate': sur})}.safetensors"
    t0 = time.time()
    _log(f"config hash {key}; work folder {work}")
    split = _load_split(data)
    _log(f"split: {len(split.labeled)} labeled, {len(split.unlabeled)} unlabeled, {len(split.test)} test images")
    model, acc = (None, None)
    if attack.needs_model:
        model, acc = _surrogate(surrogate, split, sur_ckpt, progress)
    attack.work_dir = str(work / "chunks")
    _log(f"running attack '{attack.name}'")
    poisoned = attack.poison(split, model)
    poisoned.attack["run"] = {"config_hash": key, **run, "surrogate_test_accuracy": acc}
    save_poisoned_split(out, poisoned)
    info = poisoned.attack.get("info") or {}
    _log(f"wrote {out} ({poisoned.attack['num_poisons']} poisons, {time.time() - t0:.1f}s)"
         + (f"; {json.dumps(info, sort_keys=True)}" if info else ""))
    return out


def typed_attack_block(attack: Dict[str, Any], origins: Dict[str, str]) -> Dict[str, Any]:
    """``{name: ..., **options}`` with every option typed by the named attack's constructor
    (:func:`lightning_ssl_backdoor.typed_options.typed_options`); a ``class_path`` block as given."""
    if "class_path" in attack or "name" not in attack:
        return attack
    cls = attack_class(str(attack["name"]))
    options = {k: v for k, v in attack.items() if k != "name"}
    return {"name": attack["name"], **typed_options(cls.options(), options, "attack", f"attack {cls.name!r}",
                                                   origins, "the config")}


def poison_main(argv: list[str]) -> int:
    """Entry point of ``ssl-backdoor poison``; returns the exit code (0 ok, 2 bad input, 1 fault at
    run time, 130 interrupted): errors become one sentence through ``error_boundary.guarded``."""
    from lightning_ssl_backdoor.error_boundary import guarded

    return guarded("poison", lambda: _poison(argv))


def _poison(argv: list[str]) -> int:
    from lightning_ssl_backdoor.io_lock import locked_output

    parser = make_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    argv = list(argv)
    print_config = any(a == "--print_config" or a.startswith("--print_config=") for a in argv)
    argv = [a for a in argv if not (a == "--print_config" or a.startswith("--print_config="))]
    rest, overrides = split_block_overrides(argv, ("attack",))  # typed below by the attack's class
    try:
        cfg = parser.parse_args(rest)
    except Exception as e:  # jsonargparse's ArgumentError, or a YAML / file error under -c
        raise ConfigError(" ".join(str(e).split()).rstrip(".") + ".") from None
    data = cfg.data if isinstance(cfg.data, DataConfig) else DataConfig(**dict(cfg.data))
    sur = cfg.surrogate if isinstance(cfg.surrogate, SurrogateConfig) else SurrogateConfig(**dict(cfg.surrogate))
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")]
    attack, origins = apply_overrides("attack", dict(cfg.attack or {}), overrides["attack"],
                                      ", ".join(files) or "the defaults")
    attack = typed_attack_block(attack, origins)
    if print_config:
        print(yaml.safe_dump({"data": asdict(data), "attack": attack, "surrogate": _plain(asdict(sur)),
                              "output": cfg.output, "work_dir": cfg.work_dir, "progress": cfg.progress},
                             sort_keys=False, default_flow_style=None, width=100), end="")
        return 0
    with locked_output(Path(cfg.output) if str(cfg.output or '').endswith('.npz') else None):
        run_poison(data, attack, sur, cfg.output, cfg.work_dir, bool(cfg.progress))
    return 0
