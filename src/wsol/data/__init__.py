"""Data: the WSOL metadata format, robust image decoding, datasets, transforms, and the synthetic benchmark."""

from wsol.data.datasets import (
    ClassFolderDataset,
    WSOLDataset,
    check_data_root,
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
    "ClassFolderDataset",
    "Metadata",
    "SynthConfig",
    "WSOLDataset",
    "check_data_root",
    "eval_transform",
    "find_image_files",
    "find_images",
    "generate",
    "load_image",
    "read_image",
    "train_transform",
]
