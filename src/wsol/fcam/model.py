"""FCAM = a frozen, trained WSOL classifier + a trainable U-Net decoder on its multi-scale features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wsol.errors import WSOLError
from wsol.fcam.decoder import DECODER_CHANNELS, FCAMDecoder
from wsol.modes import kept_modes


def infer_feature_channels(classifier: nn.Module, input_size: int | None = None) -> list[int]:
    """Channels of ``classifier.multiscale_features`` by one dry forward (eval mode, no gradients).

    ``input_size`` defaults to the classifier's ``data_config`` input size (224 when absent). The
    classifier's train/eval flags are restored afterwards.
    """
    if not callable(getattr(classifier, "multiscale_features", None)):
        raise WSOLError(f"F-CAM: {type(classifier).__name__} has no multiscale_features(); use a wsol classifier")
    size = input_size or int(getattr(classifier, "data_config", {}).get("input_size", (3, 224, 224))[-1])
    param = next(classifier.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with kept_modes(classifier), torch.no_grad():
        classifier.eval()
        feats = classifier.multiscale_features(torch.zeros(1, 3, size, size, device=device))
    return [int(f.shape[1]) for f in feats]


class FCAM(nn.Module):
    """Frozen classifier + decoder. ``forward(x)`` is the foreground probability (B, H, W) at input size.

    The classifier never trains: its parameters have ``requires_grad=False``, it stays in eval mode
    (BatchNorm statistics and dropout frozen) whatever ``train()`` is called with, and it runs under
    ``torch.no_grad()``. Attributes the rest of wsol reads (``num_classes``, ``data_config``, ``name``,
    ``class_names``) are the classifier's.
    """

    def __init__(self, classifier: nn.Module, decoder: FCAMDecoder | None = None, *,
                 channels: Sequence[int] = DECODER_CHANNELS, feature_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        if decoder is None:
            chans = list(feature_channels) if feature_channels is not None else infer_feature_channels(classifier)
            decoder = FCAMDecoder(chans, channels)
        self.decoder = decoder
        self.freeze_classifier()

    # ------------------------------------------------------------------ pass-through attributes
    @property
    def num_classes(self) -> int:
        return int(self.classifier.num_classes)

    @property
    def data_config(self) -> dict[str, Any]:
        return self.classifier.data_config

    @property
    def name(self) -> str:
        return f"fcam({getattr(self.classifier, 'name', '')})"

    @property
    def class_names(self) -> list[str] | None:
        return getattr(self.classifier, "class_names", None)

    @class_names.setter
    def class_names(self, names: list[str] | None) -> None:
        self.classifier.class_names = names

    # ------------------------------------------------------------------ the classifier's CAM interface
    @property
    def feature_layer(self) -> nn.Module:
        return self.classifier.feature_layer

    def features(self, x: Tensor) -> Tensor:
        """The classifier's CAM feature map F, so every CAM method also runs on an FCAM."""
        return self.classifier.features(x)

    def logits_from_features(self, f: Tensor) -> Tensor:
        return self.classifier.logits_from_features(f)

    def class_weights(self, f: Tensor) -> tuple[Tensor, Tensor]:
        return self.classifier.class_weights(f)

    def multiscale_features(self, x: Tensor) -> list[Tensor]:
        return self.classifier.multiscale_features(x)

    def param_groups(self, lr: float, classifier_mult: float = 10.0) -> list[dict[str, Any]]:
        """One optimizer group: the decoder (the classifier is frozen)."""
        return [{"params": [p for p in self.decoder.parameters() if p.requires_grad], "lr": lr, "name": "decoder"}]

    # ------------------------------------------------------------------ freezing
    def freeze_classifier(self) -> None:
        """No gradients for the classifier and eval mode for all its modules."""
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.classifier.eval()

    def train(self, mode: bool = True) -> FCAM:
        """Train/eval the decoder; the classifier always stays in eval mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    # ------------------------------------------------------------------ forward
    def encode(self, x: Tensor) -> list[Tensor]:
        """The frozen classifier's multi-scale features (no gradients)."""
        with torch.no_grad():
            return [f.detach() for f in self.classifier.multiscale_features(x)]

    def decode(self, x: Tensor, features: Sequence[Tensor] | None = None) -> Tensor:
        """Decoder logits (B, 2, H, W): channel 0 background, 1 foreground."""
        feats = self.encode(x) if features is None else features
        return self.decoder(feats, (int(x.shape[-2]), int(x.shape[-1])))

    def forward(self, x: Tensor) -> Tensor:
        """Foreground probability (B, H, W) = softmax of the decoder logits, channel 1."""
        return self.decode(x).softmax(dim=1)[:, 1]

    def extra_repr(self) -> str:
        return f"classifier={getattr(self.classifier, 'name', '')!r}, channels={self.decoder.channels}"
