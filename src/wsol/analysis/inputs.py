"""What the analyses run on: models (names, checkpoints, random weights) and batches of images (a folder, a
WSOL split, or seeded random pixels), preprocessed as the model expects."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from wsol.errors import WSOLError


@dataclass
class ModelSpec:
    """One model to analyse: a ``name`` (built) or a ``checkpoint`` (loaded; ``name`` then overrides its
    architecture), with ImageNet weights where the name has them unless ``random_init`` (then seeded: the
    same random network at every run)."""

    name: str | None = None
    checkpoint: Path | None = None
    random_init: bool = False

    @property
    def label(self) -> str:
        if self.checkpoint is not None:
            return self.checkpoint.stem
        from wsol.models import EMBEDDED_MODEL

        return (self.name or EMBEDDED_MODEL) + (" (random init)" if self.random_init else "")

    def load(self) -> nn.Module:
        from wsol.localize.pipeline import load_model

        if self.checkpoint is not None:
            return load_model(self.name, self.checkpoint)
        if not self.random_init:
            return load_model(self.name)
        from wsol.models import EMBEDDED_MODEL, build_model

        name = self.name or EMBEDDED_MODEL
        try:
            with torch.random.fork_rng(devices=[]):  # the same random network at every run
                torch.manual_seed(0)
                return build_model(name, pretrained=False)
        except WSOLError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise WSOLError(f"--model {name}: cannot be built ({type(exc).__name__}: {exc})") from exc


def model_specs(models: str | None, checkpoints: Sequence[Path], random_init: bool = False) -> list[ModelSpec]:
    """``--model a,b,c`` (one spec each) or ``--checkpoint F`` (repeatable; ``--model`` then names at most one
    architecture, applied to every file). Neither: the embedded model."""
    names = [n.strip() for n in (models or "").split(",") if n.strip()]
    if models is not None and not names:
        raise WSOLError("--model: no model name given")
    if checkpoints:
        if random_init:
            raise WSOLError("--random-init builds a model from its name; a --checkpoint has its own weights")
        if len(names) > 1:
            raise WSOLError("with --checkpoint, --model names one architecture (the files' override), "
                            f"got {len(names)}")
        for path in checkpoints:
            if not Path(path).is_file():
                raise WSOLError(f"--checkpoint {path}: file not found")
        return [ModelSpec(names[0] if names else None, Path(c)) for c in checkpoints]
    return [ModelSpec(n, None, random_init) for n in names] or [ModelSpec(None, None, random_init)]


def classifier_of(model: nn.Module) -> nn.Module:
    """The WSOL classifier inside an F-CAM model; the model itself otherwise."""
    return getattr(model, "classifier", model)


@dataclass
class ImageSet:
    """Where the images come from: ``files`` (a folder or a split), or seeded uniform random pixels."""

    files: list[Path] = field(default_factory=list)
    description: str = ""
    random_seed: int | None = None

    @property
    def is_random(self) -> bool:
        return self.random_seed is not None


def image_set(paths: Sequence[Path], metadata: Path | None, data_root: Path | None, seed: int = 0) -> ImageSet:
    """Images from ``paths`` (files or folders, searched recursively), from a WSOL split, or, with neither,
    random pixels (uniform in [0, 255], seeded)."""
    if paths and metadata is not None:
        raise WSOLError("give either image PATHs or --metadata, not both")
    if metadata is not None:
        from wsol.data.datasets import check_data_root
        from wsol.data.metadata import Metadata

        if data_root is None:
            raise WSOLError("--metadata needs --data-root (the folder the image ids are relative to)")
        split = Metadata.load(metadata)
        check_data_root(split, data_root)
        return ImageSet([Path(data_root) / i for i in split.image_ids], f"split {metadata}")
    if data_root is not None:
        raise WSOLError("--data-root works only with --metadata SPLIT_DIR")
    if paths:
        from wsol.data.images import find_image_files

        for path in paths:
            if not Path(path).exists():
                raise WSOLError(f"{path}: no such file or folder")
        files = list(find_image_files(list(paths)).files)
        if not files:
            raise WSOLError(f"no image files in {', '.join(str(p) for p in paths)}")
        return ImageSet(files, "images from " + ", ".join(str(p) for p in paths))
    return ImageSet([], f"random images (uniform pixels, seed {seed})", random_seed=seed)


def preprocess_config(model: nn.Module) -> dict:
    from wsol.localize.pipeline import preprocessing

    return preprocessing(classifier_of(model))


def image_batches(images: ImageSet, model: nn.Module, *, size: int, num_images: int, batch_size: int,
                  interpolation: str = "bicubic", workers: int = 0,
                  on_skip: Callable[[Path, str], None] | None = None) -> Iterator[Tensor]:
    """Normalised batches (B, 3, size, size) of the first ``num_images`` usable images, resized to a square
    (the authors: bicubic to 1024 x 1024) and normalised with the model's mean and std. Unreadable files
    are passed to ``on_skip`` and replaced by the next ones."""
    from wsol.data.datasets import ImageSource, collate_images
    from wsol.data.transforms import normalize_batch

    if num_images < 1:
        raise WSOLError(f"--num-images must be >= 1, got {num_images}")
    if batch_size < 1:
        raise WSOLError(f"--batch-size must be >= 1, got {batch_size}")
    if size < 1:
        raise WSOLError(f"--image-size must be >= 1, got {size}")
    prep = preprocess_config(model)
    if images.is_random:
        gen = torch.Generator().manual_seed(int(images.random_seed))
        done = 0
        while done < num_images:
            n = min(batch_size, num_images - done)
            pixels = torch.randint(0, 256, (n, size, size, 3), generator=gen, dtype=torch.uint8)
            yield normalize_batch(pixels, prep["mean"], prep["std"])
            done += n
        return
    source = ImageSource(images.files, size, interpolation, display_size=0, exact=True)
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_images)
    done = 0
    for batch in loader:
        for index, reason in batch["errors"]:
            if on_skip is not None:
                on_skip(images.files[index], reason)
        if batch["images"] is None:
            continue
        x = batch["images"][: num_images - done]
        yield normalize_batch(x, prep["mean"], prep["std"])
        done += x.shape[0]
        if done >= num_images:
            return
