"""LightningDataModule over WSOL metadata splits or a class-per-folder tree.

Two properties the training loop relies on:

- Exact resume. The training sampler's order depends only on (seed, epoch), each sample's augmentation
  draws from its own generator seeded by (seed, epoch, position), and the training loader is stateful
  (``state_dict`` / ``load_state_dict``: the batches already served in the current epoch), so a run resumed
  from a mid-epoch checkpoint sees exactly the batches the uninterrupted run would have seen.
- Exact distributed evaluation. Evaluation splits are sharded ``rank::world_size`` without padding, so no
  image is counted twice when the split size does not divide evenly (a ``DistributedSampler`` would pad).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from wsol.data.datasets import ImageList, LabeledImages, check_data_root
from wsol.data.metadata import CLASS_NAMES_FILE, Metadata, read_class_names
from wsol.data.transforms import eval_transform, train_transform
from wsol.errors import WSOLError
from wsol.train.config import TrainConfig

PIPELINE_SIZES = {"protocol": (256, 224), "cab384": (438, 384)}  # (resize, crop); eval resizes to crop


# --------------------------------------------------------------------------- transforms
def build_transforms(config: TrainConfig, mean: Sequence[float], std: Sequence[float]) -> tuple[Callable, Callable]:
    """The recipe's pipelines (:mod:`wsol.data.transforms`): train = resize (s, s), random crop c, flip;
    eval = resize (c, c)."""
    resize, crop = pipeline_sizes(config)
    return train_transform(resize, crop, mean, std), eval_transform(crop, mean, std)


def pipeline_sizes(config: TrainConfig) -> tuple[int, int]:
    """(resize, crop) of the recipe: its pipeline's defaults unless ``data.resize_size`` / ``crop_size`` say."""
    resize, crop = PIPELINE_SIZES[config.data.pipeline]
    resize = config.data.resize_size or resize
    crop = config.data.crop_size or crop
    if crop > resize:
        raise WSOLError(f"config data.crop_size={crop} is larger than data.resize_size={resize}")
    return resize, crop


class SeededShuffleSampler(Sampler):
    """Shuffled order from (seed, epoch), sharded across ranks like ``DistributedSampler`` (padded, so
    every rank gets the same number of batches); yields ``(index, augmentation seed)``; can skip a prefix."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0
        self.skip = 0
        self.num_samples = math.ceil(size / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        total = self.num_samples * self.world_size
        order += order[: total - len(order)] if total > len(order) else []
        order = order[self.rank:total:self.world_size]
        skip, self.skip = self.skip, 0
        for position in range(skip, len(order)):
            yield order[position], (self.seed * 1_000_003 + self.epoch * 10_007 + position * self.world_size
                                    + self.rank) % (2**63 - 1)


class ResumableLoader(DataLoader):
    """A DataLoader whose state is the number of batches served in the current epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._epoch_served = -1
        self._pending: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler if isinstance(self.sampler, SeededShuffleSampler) else self.batch_sampler.sampler
        epoch = sampler.epoch
        skip = 0
        if self._pending is not None and self._pending["epoch"] == epoch:
            skip = self._pending["batches"]
        self._pending = None
        sampler.skip = skip * int(self.batch_size or 1)
        self._served, self._epoch_served = skip, epoch
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch_served, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._pending = {"epoch": int(state.get("epoch", -1)), "batches": int(state.get("batches", 0))}


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...``: every image on exactly one rank, no padding."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


# --------------------------------------------------------------------------- split readers
def read_wsol_split(config: TrainConfig, split: str) -> ImageList:
    """Metadata of ``split`` under ``data.metadata``, images under ``data.root`` (checked to exist)."""
    split_dir = Path(config.data.metadata) / split
    mask_root = config.data.mask_root
    metadata = Metadata.load(split_dir, mask_root=mask_root)
    root = Path(config.data.root)
    if not root.is_dir():
        raise WSOLError(f"config data.root={root}: folder not found")
    check_data_root(metadata, root, sample=200 if split == config.data.train_split else None)
    return ImageList.from_metadata(metadata, root)


def read_folder_split(root: Path, classes: list[str] | None = None) -> ImageList:
    """A class-per-folder tree ``root/<class>/<image>``; classes sorted by name (or as given)."""
    return ImageList.from_class_folders(root, classes)


# --------------------------------------------------------------------------- the data module
class WSOLDataModule(L.LightningDataModule):
    """Train / val / test splits of a WSOL metadata dataset or a class-folder tree.

    Splits are read (and checked) at construction, in the launching process, so a wrong path fails fast.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        data = config.data
        self.class_names: list[str] | None = None
        self.splits: dict[str, ImageList | None] = {}
        if data.format == "wsol":
            self.class_names = read_class_names(Path(data.metadata) / CLASS_NAMES_FILE)
            self.splits["train"] = read_wsol_split(config, data.train_split)
            self.splits["val"] = read_wsol_split(config, data.val_split) if data.val_split else None
            self.splits["test"] = read_wsol_split(config, data.test_split) if data.test_split else None
        else:
            root = Path(data.root)
            self.splits["train"] = read_folder_split(root / data.train_split)
            self.class_names = sorted({Path(i).parts[0] for i in self.splits["train"].image_ids})
            for stage, name in (("val", data.val_split), ("test", data.test_split)):
                path = root / name if name else None
                self.splits[stage] = read_folder_split(path, self.class_names) if path and path.is_dir() else None
        labels = [lab for s in self.splits.values() if s is not None for lab in s.labels]
        self.num_classes = max(labels) + 1
        if self.class_names is not None and len(self.class_names) < self.num_classes:
            raise WSOLError(f"{Path(data.metadata) / CLASS_NAMES_FILE}: names {len(self.class_names)} classes, "
                            f"the labels go up to {self.num_classes - 1}")
        self.mean: Sequence[float] = (0.485, 0.456, 0.406)
        self.std: Sequence[float] = (0.229, 0.224, 0.225)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Mean/std of the model (overridden by ``data.mean`` / ``data.std``; 0.5 for cab384)."""
        if self.config.data.pipeline == "cab384":
            mean, std = (0.5,) * 3, (0.5,) * 3
        self.mean = tuple(self.config.data.mean or mean)
        self.std = tuple(self.config.data.std or std)

    def eval_preprocessing(self) -> dict[str, Any]:
        """How this recipe feeds images to the model at evaluation, in timm's ``data_config`` terms. Stored
        in checkpoints so that ``wsol localize`` prepares images the way the trained model saw them."""
        crop = pipeline_sizes(self.config)[1]
        return {"input_size": (3, crop, crop), "interpolation": "bilinear", "mean": tuple(self.mean),
                "std": tuple(self.std)}

    def has_localization(self, stage: str) -> bool:
        split = self.splits.get(stage)
        return split is not None and split.metadata is not None and (
            split.metadata.has_boxes or (split.metadata.has_masks and self.config.data.mask_root is not None))

    # ---- loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _workers(self) -> dict[str, Any]:
        n = self.config.data.num_workers
        return {"num_workers": n, "persistent_workers": False, "pin_memory": torch.cuda.is_available()}

    def train_dataloader(self) -> DataLoader:
        train_tf, _ = build_transforms(self.config, self.mean, self.std)
        rank, world = self._rank_world()
        split = self.splits["train"]
        sampler = SeededShuffleSampler(len(split), self.config.trainer.seed, rank, world)
        return ResumableLoader(LabeledImages(split, train_tf), batch_size=self.config.data.batch_size,
                               sampler=sampler, drop_last=False, **self._workers())

    def _eval_loader(self, stage: str) -> DataLoader:
        split = self.splits.get(stage)
        if split is None:
            return []  # type: ignore[return-value]
        _, eval_tf = build_transforms(self.config, self.mean, self.std)
        rank, world = self._rank_world()
        size = self.config.data.eval_batch_size or self.config.data.batch_size
        return DataLoader(LabeledImages(split, eval_tf), batch_size=size, sampler=ShardSampler(len(split), rank, world),
                          **self._workers())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
