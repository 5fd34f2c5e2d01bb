"""``wsol localize``, the job: a model's maps, boxes and overlays for folders of images
(:mod:`~wsol.localize.folder`), and the score maps / metrics of a WSOL split (:mod:`~wsol.localize.split`),
over one shared pipeline (:mod:`~wsol.localize.pipeline`); shards and their merge in
:mod:`~wsol.localize.shards`. The map primitives it uses live in :mod:`wsol.maps`. Names are imported on
first use."""

from __future__ import annotations

from wsol.lazy import lazy_exports

_EXPORTS = {
    **{name: "folder" for name in ("LocalizeOptions", "ResultsLog", "localize_images")},
    **{name: "pipeline" for name in ("BatchResult", "Summary", "load_model", "localize_loader", "preprocessing",
                                     "resolve_device", "resolve_target", "run_model")},
    **{name: "split" for name in ("SCOREMAPS_RECORD", "localize_split")},
    **{name: "shards" for name in ("merge", "parse_shard")},
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
