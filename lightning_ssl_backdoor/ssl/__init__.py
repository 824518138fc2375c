"""SSL algorithms: one small file each on the shared :class:`SSLModule` base.

``ALGORITHMS`` maps the names used by configs and the experiment runner to the classes. The
iterative self-training defense of Pal et al. is a driver over several Trainers, not a
LightningModule: see :mod:`lightning_ssl_backdoor.defenses.self_training`.
"""

from lightning_ssl_backdoor.ssl.base import SSLModule
from lightning_ssl_backdoor.ssl.fixmatch import FixMatch
from lightning_ssl_backdoor.ssl.flexmatch import FlexMatch
from lightning_ssl_backdoor.ssl.mean_teacher import MeanTeacher
from lightning_ssl_backdoor.ssl.mixmatch import MixMatch
from lightning_ssl_backdoor.ssl.oracle import FixMatchOracle
from lightning_ssl_backdoor.ssl.pi_model import PiModel
from lightning_ssl_backdoor.ssl.pseudo_label import PseudoLabel
from lightning_ssl_backdoor.ssl.supervised import Supervised
from lightning_ssl_backdoor.ssl.uda import UDA
from lightning_ssl_backdoor.ssl.vat import VAT

ALGORITHMS = {
    "supervised": Supervised,
    "fixmatch": FixMatch,
    "pseudo_label": PseudoLabel,
    "pi_model": PiModel,
    "mean_teacher": MeanTeacher,
    "vat": VAT,
    "mixmatch": MixMatch,
    "uda": UDA,
    "flexmatch": FlexMatch,
    "fixmatch_oracle": FixMatchOracle,
}

#: how reports (LaTeX tables, figure legends) name each algorithm; see :func:`display_name`
DISPLAY_NAMES = {
    "supervised": "Supervised", "fixmatch": "FixMatch", "pseudo_label": "Pseudo-Label", "pi_model": "Pi-model",
    "mean_teacher": "Mean Teacher", "vat": "VAT", "mixmatch": "MixMatch", "uda": "UDA", "flexmatch": "FlexMatch",
    "fixmatch_oracle": "FixMatch (oracle)",
}


def display_name(name: str) -> str:
    """The name reports print for the algorithm registered as ``name`` (the name itself if unknown)."""
    return DISPLAY_NAMES.get(name, name)


def resolve_algorithm(name: str) -> type[SSLModule]:
    """An algorithm name from :data:`ALGORITHMS`, or an SSLModule subclass of this package by its
    dotted path (classes defenses derive, such as ``PurifiedFixMatch``); nothing outside the package
    is imported because a config named it (see :mod:`lightning_ssl_backdoor.names`)."""
    from lightning_ssl_backdoor.names import resolve

    return resolve(name, ALGORITHMS, "algorithm", SSLModule)


__all__ = [
    "ALGORITHMS",
    "DISPLAY_NAMES",
    "FixMatch",
    "FixMatchOracle",
    "FlexMatch",
    "MeanTeacher",
    "MixMatch",
    "PiModel",
    "PseudoLabel",
    "SSLModule",
    "Supervised",
    "UDA",
    "VAT",
    "display_name",
    "resolve_algorithm",
]
