"""F-CAM: full-resolution activation maps from a decoder trained on top of a frozen WSOL classifier."""

from wsol.fcam.checkpoint import fcam_checkpoint, is_fcam_checkpoint, load_fcam, save_fcam
from wsol.fcam.decoder import DECODER_CHANNELS, FCAMDecoder
from wsol.fcam.losses import (
    FCAMLossWeights,
    LogBarrierSchedule,
    dense_crf_loss,
    extended_log_barrier,
    fcam_loss,
    partial_cross_entropy,
    size_loss,
)
from wsol.fcam.model import FCAM, infer_feature_channels
from wsol.fcam.sampling import IGNORE, otsu_thresholds, sample_pseudo_labels, sampling_regions, upsample_cams

__all__ = [
    "DECODER_CHANNELS", "FCAM", "IGNORE", "FCAMDecoder", "FCAMLossWeights", "LogBarrierSchedule",
    "dense_crf_loss", "extended_log_barrier", "fcam_checkpoint", "fcam_loss", "infer_feature_channels",
    "is_fcam_checkpoint", "load_fcam", "otsu_thresholds", "partial_cross_entropy", "sample_pseudo_labels",
    "sampling_regions", "save_fcam", "size_loss", "upsample_cams",
]
