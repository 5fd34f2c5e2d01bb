"""Attention-based Dropout Layer (Choe & Shim, CVPR 2019): drop the most activated region, or stress it.

As wsolevaluation's ``wsol/method/adl.py``: in training, the self-attention map is the channel mean of the
block's output; with probability ``drop_rate`` (one draw per batch) the output is multiplied by the drop mask
(``attention < threshold * max``, per image), else by the importance map ``sigmoid(attention)``. At test time
it is the identity, so a trained ADL model is a plain classifier and its map is the CAM.

The layers act through forward hooks after named blocks, so that the network's weights keep their names:
the protocol's places (wsolevaluation's ``_ADL_POSITION``, its VGG ``'A'`` entries, ``ADL_5d`` / ``ADL_6e`` /
``ADL_A3_2b``) for ResNet50 / VGG16 / InceptionV3, ``method.adl_blocks`` (module names) for any backbone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsol.errors import WSOLError
from wsol.methods.base import TrainingMethod

#: The protocol's insertion points, as our backbones name the modules (``backbone.`` omitted).
PROTOCOL_BLOCKS = {
    "resnet50": ("layer3.0", "layer4.0", "layer4.2"),
    "vgg16": ("features.16", "features.22", "features.29"),  # after pool3, conv4_3 + ReLU, conv5_3 + ReLU
    "inception_v3": ("Mixed_5d", "Mixed_6e", "SPG_A3_2b"),
}


class ADLayer(nn.Module):
    """The ADL operation (no weights): identity in eval mode."""

    def __init__(self, drop_rate: float = 0.75, threshold: float = 0.9) -> None:
        super().__init__()
        self.drop_rate = drop_rate
        self.threshold = threshold

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        attention = x.mean(dim=1, keepdim=True)
        peak = attention.flatten(1).amax(1).view(-1, 1, 1, 1)
        drop_mask = (attention < peak * self.threshold).to(x.dtype)
        use_drop = float(torch.rand(()) + self.drop_rate >= 1.0)  # floor(U + rate) = 1 with probability rate
        return x * (use_drop * drop_mask + (1.0 - use_drop) * torch.sigmoid(attention))

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, threshold={self.threshold}"


class ADL(TrainingMethod):
    """ADL layers after the configured blocks; cross-entropy."""

    name = "adl"

    @classmethod
    def check(cls, options) -> None:
        for key in ("adl_drop_rate", "adl_threshold"):
            if not 0 <= getattr(options, key) <= 1:
                raise WSOLError(f"config method.{key}={getattr(options, key)}: must lie in [0, 1]")

    def blocks(self, model: nn.Module) -> tuple[str, ...]:
        if self.options.adl_blocks:
            return tuple(self.options.adl_blocks)
        arch = str(getattr(model, "name", "")).split(".")[0]
        if arch not in PROTOCOL_BLOCKS:
            raise WSOLError(f"config method.adl_blocks: required for model {arch!r} (the backbone modules after "
                            f"which ADL acts); the protocol defines them for {', '.join(PROTOCOL_BLOCKS)}")
        return PROTOCOL_BLOCKS[arch]

    def setup(self, model: nn.Module) -> None:
        layers = nn.ModuleList()
        for name in self.blocks(model):
            try:
                block = model.backbone.get_submodule(name)
            except AttributeError:
                raise WSOLError(f"config method.adl_blocks: {name!r} is not a module of the backbone "
                                f"({type(model.backbone).__name__})") from None
            layer = ADLayer(self.options.adl_drop_rate, self.options.adl_threshold)
            block.register_forward_hook(lambda _m, _i, out, layer=layer: layer(out))
            layers.append(layer)
        model.adl_layers = layers  # sub-modules: they follow model.train() / .eval(); no weights, no state keys
