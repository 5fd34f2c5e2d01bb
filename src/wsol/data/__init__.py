"""Data: the WSOL metadata format, robust image decoding, datasets, transforms, the dataset preparers and
the synthetic benchmark. Names are imported on first use, so that ``wsol --help`` does not load torch."""

from __future__ import annotations

from wsol.lazy import lazy_exports

_EXPORTS = {
    **{name: "datasets" for name in ("DISPLAY_SIZE", "ImageList", "ImageSource", "LabeledImages",
                                     "check_data_root", "collate_images", "default_workers", "display_shape",
                                     "image_loader")},
    "IMAGE_EXTENSIONS": "images", "find_image_files": "images", "find_images": "images", "load_image": "images",
    "read_image": "images",
    "EVAL_SIZE": "metadata", "Metadata": "metadata", "Record": "metadata", "write_split": "metadata",
    "SynthConfig": "synth", "generate": "synth",
    "HALF_MEAN_STD": "transforms", "IMAGENET_MEAN": "transforms", "IMAGENET_STD": "transforms",
    "eval_transform": "transforms", "train_transform": "transforms",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
