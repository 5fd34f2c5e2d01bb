"""F-CAM: full-resolution activation maps from a decoder trained on top of a frozen WSOL classifier.

Names are imported on first use, so that the command line (``wsol.fcam.cli``) starts without torch."""

from __future__ import annotations

from wsol.lazy import lazy_exports

_EXPORTS = {
    "fcam_checkpoint": "checkpoint", "is_fcam_checkpoint": "checkpoint", "load_fcam": "checkpoint",
    "save_fcam": "checkpoint",
    "DECODER_CHANNELS": "decoder", "FCAMDecoder": "decoder",
    "FCAMLossWeights": "losses", "LogBarrierSchedule": "losses", "dense_crf_loss": "losses",
    "extended_log_barrier": "losses", "fcam_loss": "losses", "partial_cross_entropy": "losses", "size_loss": "losses",
    "FCAM": "model", "infer_feature_channels": "model",
    "IGNORE": "sampling", "otsu_thresholds": "sampling", "sample_pseudo_labels": "sampling",
    "sampling_regions": "sampling", "upsample_cams": "sampling",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
