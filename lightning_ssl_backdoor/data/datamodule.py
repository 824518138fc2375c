"""`SSLDataModule`: iteration-based SSL data for Lightning.

It yields uint8 batches that carry dataset indices; augmentation happens on the device inside the
LightningModule. The split comes from (in order of precedence) an ``SSLSplit``/``PoisonedSplit``
passed in code, a PoisonedSplit artifact (``poisoned_split: path.npz``), or the named dataset read
from disk and split by :func:`make_split` with ``seed``.
"""

from __future__ import annotations

from typing import Optional

from lightning_ssl_backdoor._lightning import pl
import torch
from torch.utils.data import DataLoader

from lightning_ssl_backdoor.data.artifact_agreement import check_artifact_agrees
from lightning_ssl_backdoor.data.imageset import ImageSet, quantize
from lightning_ssl_backdoor.data.split import PoisonedSplit, SSLSplit
from lightning_ssl_backdoor.data.subset import check_subset, subset_split
from lightning_ssl_backdoor.data.streams import EvalStream, SSLTrainStream
from lightning_ssl_backdoor.errors import ConfigError


#: labels per class when neither num_labeled nor labels_per_class is given (and no artifact)
DEFAULT_LABELS_PER_CLASS = 4


def triggered_copy(images: torch.Tensor, trigger: torch.nn.Module, chunk: int = 1024) -> torch.Tensor:
    """Apply ``trigger`` in float [0, 1] to uint8 ``images`` in chunks; clip and quantise once."""
    out = torch.empty_like(images)
    with torch.no_grad():
        for s in range(0, len(images), chunk):
            x = images[s : s + chunk].float().div_(255.0)
            out[s : s + chunk] = quantize(trigger(x))
    return out


class SSLDataModule(pl.LightningDataModule):
    """Labeled + unlabeled training stream at ratio ``mu``; clean and triggered evaluation.

    Args:
        dataset: one of ``digits, cifar10, cifar100, svhn, stl10, folder``.
        root: folder holding the dataset files (not needed for ``digits``).
        image_size: images are resized to this side length (digits: upscaled from 8x8).
        channels: 1 or 3 image channels; None (default) keeps the dataset's own (digits: 1, the
            RGB sets: 3). The model's ``in_channels`` follows the data (:attr:`in_channels`).
        num_labeled / labels_per_class: labeled budget, total or per class (class-balanced; neither:
            4 per class). With ``poisoned_split`` the artifact fixes them: set, they must agree with it.
        num_unlabeled: optional cap on the unlabeled pool (reduced-scale runs).
        include_labeled_in_unlabeled: also put the labeled images in the unlabeled pool.
        batch_size: labeled images per step; the unlabeled batch is ``mu * batch_size``.
        eval_batch_size: images per evaluation batch.
        num_workers: loader worker processes.
        seed: controls the split and the sampling order.
        poisoned_split: path of a PoisonedSplit artifact (written by ``ssl-backdoor poison``).
        split: a ready ``SSLSplit`` / ``PoisonedSplit`` (programmatic use; overrides the rest).
        subset: classes and per-class labeled / unlabeled / test counts
            (:mod:`lightning_ssl_backdoor.data.subset`).
        cache_dir: where decoded file-based data sets are cached (:mod:`lightning_ssl_backdoor.data.cache`).
    """

    def __init__(
        self,
        dataset: str = "digits",
        root: Optional[str] = None,
        image_size: int = 32,
        channels: Optional[int] = None,
        num_labeled: Optional[int] = None,
        labels_per_class: Optional[int] = None,
        num_unlabeled: Optional[int] = None,
        include_labeled_in_unlabeled: bool = False,
        batch_size: int = 64,
        mu: int = 7,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        poisoned_split: Optional[str] = None,
        split: Optional[SSLSplit] = None,
        subset: Optional[dict] = None,
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        if num_labeled is not None:
            labels_per_class = None
        if batch_size < 1 or mu < 0 or eval_batch_size < 1:
            raise ConfigError("batch_size and eval_batch_size must be >= 1 and mu >= 0.")
        from lightning_ssl_backdoor.data.readers_common import check_image_size

        check_image_size(image_size)
        self.save_hyperparameters(ignore=["split"])
        self.dataset, self.root, self.image_size = dataset, root, int(image_size)
        self.channels = channels
        self.num_labeled, self.labels_per_class = num_labeled, labels_per_class
        self.num_unlabeled = num_unlabeled
        self.include_labeled_in_unlabeled = include_labeled_in_unlabeled
        self.batch_size, self.mu, self.eval_batch_size = int(batch_size), int(mu), int(eval_batch_size)
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.poisoned_split = poisoned_split
        self.subset, self.cache_dir = check_subset(subset), cache_dir
        self._split: Optional[SSLSplit] = split
        self._triggered_test: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------- split
    @property
    def split(self) -> SSLSplit:
        if self._split is None:
            self._split = self._build_split()
        return self._split

    def _build_split(self) -> SSLSplit:
        if self.poisoned_split is not None:
            from lightning_ssl_backdoor.data.poisoned_io import load_poisoned_split

            split = load_poisoned_split(self.poisoned_split)
            # one rule: what the artifact fixes (pixels, channels, labels, classes) is never changed
            # silently; a set option that disagrees stops the run (the default 32 px is compared too)
            check_artifact_agrees(split, str(self.poisoned_split), image_size=self.image_size, channels=self.channels,
                                  num_labeled=self.num_labeled, labels_per_class=self.labels_per_class,
                                  classes=(self.subset or {}).get("classes"))
            return split
        from lightning_ssl_backdoor.data.readers import load_dataset

        opts = dict(root=self.root, image_size=self.image_size, channels=self.channels,
                    cache_dir=self.cache_dir)
        train = load_dataset(self.dataset, "train", **opts)
        test = load_dataset(self.dataset, "test", **opts)
        return subset_split(
            train,
            test,
            self.subset,
            num_labeled=self.num_labeled,
            labels_per_class=self.labels_per_class if self.num_labeled or self.labels_per_class else DEFAULT_LABELS_PER_CLASS,
            include_labeled_in_unlabeled=self.include_labeled_in_unlabeled,
            seed=self.seed,
            num_unlabeled=self.num_unlabeled,
        )

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    @property
    def in_channels(self) -> int:
        """Channels of the images (the model's ``in_channels``, linked by the CLI)."""
        return int(self.split.test.images.shape[1])

    @property
    def trigger(self) -> Optional[torch.nn.Module]:
        return getattr(self.split, "trigger", None)

    @property
    def target(self) -> Optional[int]:
        t = getattr(self.split, "target", None)
        return None if t is None else int(t)

    @property
    def unlabeled_poison_mask(self) -> Optional[torch.Tensor]:
        if isinstance(self.split, PoisonedSplit):
            return self.split.unlabeled_poison_mask
        return None

    def setup(self, stage: Optional[str] = None) -> None:
        split = self.split
        if self.trigger is not None and self._triggered_test is None:
            self._triggered_test = triggered_copy(split.test.images, self.trigger)

    # ----------------------------------------------------------- dataloaders
    def _loader(self, stream) -> DataLoader:
        # A private generator: creating a loader iterator draws a base seed from it, never from the
        # global RNG, so evaluation does not shift the augmentation draws of training (exact resume).
        return DataLoader(
            stream,
            batch_size=None,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        split = self.split
        start = 0
        if self.trainer is not None:
            start = int(self.trainer.global_step)
        stream = SSLTrainStream(
            split.labeled,
            split.unlabeled if self.mu > 0 else None,
            batch_size=self.batch_size,
            mu=self.mu,
            seed=self.seed,
            start_step=start,
        )
        return self._loader(stream)

    def eval_stream(self, images: Optional[ImageSet] = None) -> EvalStream:
        test = self.split.test if images is None else images
        trig = self._triggered_test if images is None else None
        return EvalStream(test.images, test.targets, self.eval_batch_size, triggered=trig)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_stream())

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_stream())
