"""Data: the WSOL metadata format, robust image decoding, and the synthetic benchmark."""

from wsol.data.images import IMAGE_EXTENSIONS, find_image_files, read_image
from wsol.data.metadata import EVAL_SIZE, Metadata

__all__ = ["EVAL_SIZE", "IMAGE_EXTENSIONS", "Metadata", "find_image_files", "read_image"]
