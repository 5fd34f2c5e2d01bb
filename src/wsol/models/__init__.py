"""models: backbone + pooling head = a classifier exposing (features, logits, folded class weights)."""

from wsol.models import replknet as _replknet  # noqa: F401  (registers replknet_* with timm)
from wsol.models import slak as _slak  # noqa: F401  (registers slak_* with timm)
from wsol.models.classifier import WSOLClassifier, check_finite_weights, load_weights
from wsol.models.factory import EMBEDDED_MODEL, WSOL_MODELS, build_model, list_models
from wsol.models.heads import BatchNormHead, LayerNormHead, LinearHead, Pool, tap_pool
from wsol.models.load import CheckpointInfo, inspect, load

__all__ = [
    "EMBEDDED_MODEL",
    "WSOL_MODELS",
    "BatchNormHead",
    "CheckpointInfo",
    "LayerNormHead",
    "LinearHead",
    "Pool",
    "WSOLClassifier",
    "build_model",
    "check_finite_weights",
    "inspect",
    "list_models",
    "load",
    "load_weights",
    "tap_pool",
]
