"""Data layer: readers, ImageSet, splits, artifacts and the SSLDataModule."""

from lightning_ssl_backdoor.data.datamodule import SSLDataModule, triggered_copy
from lightning_ssl_backdoor.data.imageset import ImageSet, quantize
from lightning_ssl_backdoor.data.split import PoisonedSplit, SSLSplit, make_split

__all__ = [
    "ImageSet",
    "PoisonedSplit",
    "SSLDataModule",
    "SSLSplit",
    "make_split",
    "quantize",
    "triggered_copy",
]
