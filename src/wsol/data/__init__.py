"""Data: the WSOL metadata format, robust image decoding, datasets, transforms, and the synthetic benchmark."""

from wsol.data.datasets import (
    BrokenImage,
    ClassFolderDataset,
    ImageBatch,
    ImageListDataset,
    WSOLDataset,
    check_data_root,
    collate_skip_broken,
)
from wsol.data.images import IMAGE_EXTENSIONS, find_image_files, find_images, load_image, read_image
from wsol.data.metadata import EVAL_SIZE, Metadata
from wsol.data.synth import SynthConfig, generate
from wsol.data.transforms import HALF_MEAN_STD, IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

__all__ = [
    "EVAL_SIZE",
    "HALF_MEAN_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "BrokenImage",
    "ClassFolderDataset",
    "ImageBatch",
    "ImageListDataset",
    "Metadata",
    "SynthConfig",
    "WSOLDataset",
    "check_data_root",
    "collate_skip_broken",
    "eval_transform",
    "find_image_files",
    "find_images",
    "generate",
    "load_image",
    "read_image",
    "train_transform",
]
