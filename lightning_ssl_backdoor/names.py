"""Names in configs resolve only through the registries.

A config names a component (``fixmatch``, ``deneb``, ``clustering``) and the name is looked up in
its registry. Dotted paths are accepted only for classes *of this package* that subclass the
component's base (the classes defenses derive at run time, such as ``PurifiedFixMatch``); nothing
outside ``lightning_ssl_backdoor`` is ever imported because a config named it, so
``--algorithms '[os.system]'`` is refused before any import. Arbitrary user classes go through
LightningCLI's explicit ``class_path`` (``ssl-backdoor fit --model.class_path ...``), which checks
the base class too.
"""

from __future__ import annotations

import importlib
from typing import Mapping, Optional

from lightning_ssl_backdoor.errors import ConfigError

PACKAGE = "lightning_ssl_backdoor"


def resolve(name: object, registry: Mapping[str, type], kind: str, base: Optional[type] = None) -> type:
    """The class registered as ``name``, or a ``base`` subclass at a dotted path inside this package."""
    choices = ", ".join(sorted(registry))
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a {kind} must be named by a string; choose one of {choices}.")
    if name in registry:
        return registry[name]
    if "." in name and base is not None:
        module, _, attr = name.rpartition(".")
        if module == PACKAGE or module.startswith(PACKAGE + "."):
            try:
                cls = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                cls = None
            if isinstance(cls, type) and issubclass(cls, base):
                return cls
        raise ConfigError(
            f"unknown {kind} {name!r}: a dotted name must be a {base.__name__} subclass inside {PACKAGE}; "
            f"choose one of {choices}."
        )
    raise ConfigError(f"unknown {kind} {name!r}; choose one of {choices}.")
