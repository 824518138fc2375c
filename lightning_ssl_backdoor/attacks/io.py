"""Re-export of :mod:`lightning_ssl_backdoor.data.poisoned_io` (where artifact I/O lives now).

Kept so that ``from lightning_ssl_backdoor.attacks.io import load_poisoned_split`` keeps working;
code inside the package imports from ``lightning_ssl_backdoor.data.poisoned_io``.
"""

from lightning_ssl_backdoor.data.poisoned_io import (  # noqa: F401
    FORMAT,
    VERSION,
    artifact_meta,
    load_poisoned_split,
    save_poisoned_split,
)

__all__ = ["FORMAT", "VERSION", "artifact_meta", "load_poisoned_split", "save_poisoned_split"]
