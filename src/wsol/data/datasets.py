"""The image datasets: labelled splits for training and evaluation, and robust decoding for localization.

- :class:`ImageList` is a split (image ids under a root, labels), read from a WSOL metadata split or a
  class-per-folder tree; :class:`LabeledImages` serves it as ``(image tensor, label, index)``, raising on an
  unreadable image (a training set with a broken file is a bug to fix first).
- :class:`ImageSource` decodes any file for ``wsol localize`` and the reports, returning an error item
  instead of raising; :func:`collate_images` batches the good items and passes the failures through, and
  :func:`image_loader` is the DataLoader over it.

Every item carries its index, so that maps, boxes and errors are matched back to the file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resize

from wsol.data.images import find_image_files, read_image
from wsol.data.metadata import Metadata
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


@dataclass
class ImageList:
    """A split: image paths (ids relative to ``root``) and labels, plus its metadata when WSOL."""

    root: Path
    image_ids: list[str]
    labels: list[int]
    metadata: Metadata | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_metadata(cls, metadata: Metadata, root: str | Path) -> ImageList:
        """A WSOL metadata split with its images under ``root``."""
        ids = list(metadata.image_ids)
        return cls(Path(root), ids, [metadata.labels[i] for i in ids], metadata,
                   name=str(metadata.split_dir / "image_ids.txt"))

    @classmethod
    def from_class_folders(cls, root: str | Path, classes: Sequence[str] | None = None) -> ImageList:
        """``root/<class>/**/<image>``, labels from the sorted class names (``classes`` fixes the order, e.g.
        a val tree labelled like its train tree).

        Every non-hidden sub-folder is a class, and an empty one is an error: silently skipping it would shift
        the labels of every class after it.
        """
        root = Path(root)
        if not root.is_dir():
            raise WSOLError(f"{root}: class folder root not found")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        names = list(classes) if classes is not None else found
        if not names:
            raise WSOLError(f"{root}: no class sub-folders")
        label_of = {name: k for k, name in enumerate(names)}
        ids: list[str] = []
        labels: list[int] = []
        for name in found:
            if name not in label_of:
                raise WSOLError(f"{root / name}: class folder not among the classes {names}")
            files = find_image_files([root / name]).files
            if not files and classes is None:
                raise WSOLError(f"{root / name}: class folder has no image files")
            ids.extend(str(Path(path).relative_to(root)) for path in files)
            labels.extend([label_of[name]] * len(files))
        if not ids:
            raise WSOLError(f"{root}: no image files")
        return cls(root, ids, labels, None, name=str(root))


class LabeledImages(Dataset):
    """``(image, label, index)`` of an :class:`ImageList`; a key ``(index, seed)`` makes the random
    augmentation reproducible (the same crop and flip whichever worker draws it)."""

    def __init__(self, images: ImageList, transform: Callable) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path = self.images.root / self.images.image_ids[index]
        if not path.is_file():
            raise WSOLError(f"{path}: image file not found (named by {self.images.name})")
        image = read_image(path)[0]
        if seed is None:
            x = self.transform(image)
        else:
            state = torch.random.get_rng_state()
            py_state = random.getstate()
            try:
                torch.manual_seed(seed)
                random.seed(seed)
                x = self.transform(image)
            finally:
                torch.random.set_rng_state(state)
                random.setstate(py_state)
        return x, self.images.labels[index], index


# ---------------------------------------------------------------------------------------------- decoding
DISPLAY_SIZE = 512  # longest side of overlays and of the map boxes are traced on


def display_shape(width: int, height: int, limit: int = DISPLAY_SIZE) -> tuple[int, int]:
    """(width, height) scaled so the longest side is at most ``limit`` (never enlarged)."""
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class ImageSource(Dataset):
    """Decodes images for localization: each item is a dict with ``index``, the model input ``image`` as an
    (S, S, 3) uint8 tensor (the whole image resized to S x S, no crop, so maps cover the whole image; batches
    are normalised on the device by :func:`wsol.data.transforms.normalize_batch`), the original
    ``width``/``height``, a ``display`` RGB uint8 array (longest side <= ``display_size``; None when
    ``display_size`` is 0) and ``note``; or ``{"index", "error"}`` when the file cannot be used.

    ``exact=True`` reproduces the WSOL reference's preprocessing bit for bit (a full decode and PIL's
    resize, as :func:`wsol.data.transforms.eval_transform` at ``image_size``): used for score maps that get
    evaluated.
    ``exact=False`` is for browsing photos: large JPEGs decode at a reduced DCT scale and both resizes are
    torchvision's antialiased uint8 kernels (vectorised; PIL's filters up to the rounding of a few grey
    levels), about 2.5x cheaper per image.
    """

    def __init__(self, files: Sequence[str | Path], image_size: int = 224, interpolation: str = "bicubic",
                 display_size: int = DISPLAY_SIZE, exact: bool = False) -> None:
        self.files = [Path(f) for f in files]
        self.image_size = int(image_size)
        if interpolation not in _PIL_RESAMPLE:
            raise WSOLError(f"interpolation must be one of {sorted(_PIL_RESAMPLE)}, got {interpolation!r}")
        self.interpolation = interpolation
        self.display_size = int(display_size)
        self.exact = exact

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        try:
            draft = None if self.exact else max(self.image_size, self.display_size)
            image, width, height, note = read_image(path, draft_size=draft)
            s = self.image_size
            pixels = torch.from_numpy(np.array(image)) if self.display_size or not self.exact else None
            if self.exact:
                model_in = torch.from_numpy(np.array(image.resize((s, s), _PIL_RESAMPLE[self.interpolation])))
            else:
                model_in = _resize_uint8(pixels, (s, s), self.interpolation)
            display = None
            if self.display_size:
                shape = display_shape(width, height, self.display_size)
                display = _resize_uint8(pixels, shape, "bilinear").numpy()
        except WSOLError as exc:
            return {"index": index, "error": str(exc).removeprefix(f"{path}: ")}
        except Exception as exc:  # noqa: BLE001 - never kill a long run for one file
            return {"index": index, "error": f"{type(exc).__name__}: {exc}"}
        return {"index": index, "image": model_in.contiguous(), "width": width,
                "height": height, "display": display, "note": note}


_PIL_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                 "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def _resize_uint8(image: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    """An (H, W, 3) uint8 image resized to ``size = (width, height)`` with torchvision's antialiased uint8
    kernels (lanczos, which they lack, falls back to bicubic); the image itself when the size matches."""
    w, h = size
    if tuple(image.shape[:2]) == (h, w):
        return image
    mode = {"bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}.get(
        interpolation, InterpolationMode.BICUBIC)
    return resize(image.permute(2, 0, 1), [h, w], interpolation=mode, antialias=True).permute(1, 2, 0)


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; failures go to ``errors`` as ``(index, reason)``; ``images`` is None if none."""
    good = [it for it in items if "error" not in it]
    return {
        "images": torch.stack([it["image"] for it in good]) if good else None,
        "indices": [it["index"] for it in good],
        "widths": [it["width"] for it in good],
        "heights": [it["height"] for it in good],
        "displays": [it["display"] for it in good],
        "notes": [it["note"] for it in good],
        "errors": [(it["index"], it["error"]) for it in items if "error" in it],
    }


def default_workers(device: torch.device, cpus: int | None = None) -> int:
    """Decoding workers when none are asked for. On a GPU: CPUs - 1, at most 4. On the CPU the model's
    forward pass already keeps every core busy, and a worker process that takes a core from it stalls its
    threads at every synchronisation: on 2 cores, 1 worker ran 20 % slower than decoding between batches
    in the main process (``benchmarks/bench_localize.py --workers``). So none up to 3 CPUs, then one per 4."""
    if cpus is None:  # the CPUs this process may run on (affinity, cgroup cpusets), not the machine's
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    if device.type == "cpu":
        return 0 if cpus < 4 else min(4, cpus // 4)
    return max(1, min(4, cpus - 1))


def image_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """A DataLoader over an :class:`ImageSource`, in order, batched by :func:`collate_images`."""
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_images, pin_memory=device.type == "cuda", **kwargs)
