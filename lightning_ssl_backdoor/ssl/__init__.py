"""SSL algorithms: one small file each on the shared :class:`SSLModule` base."""

from lightning_ssl_backdoor.ssl.base import SSLModule
from lightning_ssl_backdoor.ssl.fixmatch import FixMatch
from lightning_ssl_backdoor.ssl.supervised import Supervised

ALGORITHMS = {"supervised": Supervised, "fixmatch": FixMatch}

__all__ = ["ALGORITHMS", "FixMatch", "SSLModule", "Supervised"]
