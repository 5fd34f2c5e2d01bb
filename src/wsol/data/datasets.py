"""Torch datasets over the three ways images arrive: a WSOL metadata split, a class-per-folder tree, a list.

Every item carries its index so that score maps, boxes and errors can be matched back to the file (the
metric code keys results by image id, and a batch job must say *which* image failed). Labelled datasets
raise :class:`~wsol.errors.WSOLError` on an unreadable image: a training set with a broken file is a bug
to fix first. :class:`ImageListDataset` is for batch inference over arbitrary files, so it flags a broken
image instead, and :func:`collate_skip_broken` drops it from the batch and reports it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from wsol.data.images import find_image_files, load_image
from wsol.data.metadata import Metadata
from wsol.data.transforms import eval_transform
from wsol.errors import WSOLError


def check_data_root(metadata: Metadata, data_root: str | Path, sample: int | None = None) -> None:
    """Raise naming the first image of ``metadata`` missing under ``data_root`` (before a long run starts).

    ``sample`` checks the first, the last and that many random images only (a quick start on huge
    training splits); by default every image is checked.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise WSOLError(f"{root}: data root folder not found (images of {metadata.split_dir})")
    ids = list(metadata.image_ids)
    if sample is not None and len(ids) > sample + 2:
        ids = [ids[0], ids[-1], *random.Random(0).sample(ids, sample)]
    missing = [image_id for image_id in ids if not (root / image_id).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(ids)} checked)" if len(missing) > 1 else ""
        raise WSOLError(
            f"{root / missing[0]}: image file not found (id {missing[0]!r} in "
            f"{metadata.split_dir / 'image_ids.txt'}){more}"
        )


class WSOLDataset(Dataset):
    """A metadata split: ``(image tensor, label, index)``; ``image_ids[index]`` names the image."""

    def __init__(self, metadata: Metadata, data_root: str | Path, transform: Callable | None = None) -> None:
        self.metadata = metadata
        self.data_root = Path(data_root)
        self.transform = transform if transform is not None else eval_transform()
        self.image_ids = list(metadata.image_ids)
        self.labels = [metadata.labels[image_id] for image_id in self.image_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        path = self.data_root / self.image_ids[index]
        if not path.is_file():
            raise WSOLError(f"{path}: image file not found (id {self.image_ids[index]!r} of {self.metadata.split_dir})")
        return self.transform(load_image(path)), self.labels[index], index


class ClassFolderDataset(Dataset):
    """``root/<class>/**/<image>``: ``(image tensor, label, index)``, labels from the sorted class names.

    Every non-hidden sub-folder is a class, and an empty one is an error: silently skipping it would shift
    the labels of every class after it.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None,
                 classes: Sequence[str] | None = None) -> None:
        """``classes`` fixes the label order (e.g. a val tree labelled like its train tree)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise WSOLError(f"{self.root}: class folder root not found")
        self.transform = transform if transform is not None else eval_transform()
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = list(classes) if classes is not None else found
        if not self.classes:
            raise WSOLError(f"{self.root}: no class sub-folders")
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for name in found:
            if name not in self.class_to_idx:
                raise WSOLError(f"{self.root / name}: class folder not among the classes {self.classes}")
            files = find_image_files([self.root / name]).files
            if not files and classes is None:
                raise WSOLError(f"{self.root / name}: class folder has no image files")
            self.samples.extend((path, self.class_to_idx[name]) for path in files)
        if not self.samples:
            raise WSOLError(f"{self.root}: no image files")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        path, label = self.samples[index]
        return self.transform(load_image(path)), label, index
