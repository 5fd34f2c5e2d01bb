"""SPG, Self-produced Guidance (Zhang et al., ECCV 2018): pixel pseudo-labels (foreground / background /
ignored) from the network's own maps supervise side branches that sharpen the classifier's map.

As wsolevaluation's ``wsol/method/spg.py`` (``compute_attention``, ``get_loss``, ``get_mask``, ``mask_fg``,
``mask_bg``, ``loss_attention``) and its ``ResNetSpg`` / ``VggSpg`` / ``InceptionSpg``:

* the network (``SPG_A*``: the classification trunk; ``SPG_B_*``: two side branches sharing
  ``SPG_B_shared``, each ending in a one-channel map; ``SPG_C``: a one-channel map on the last features):

  ==============  ======================================  ===============================  =================
  backbone        B1 reads                                B2 reads                         F (SPG_A4's input)
  ==============  ======================================  ===============================  =================
  ResNet50        ``SPG_A1`` (= layer3's first block)     ``SPG_A2`` (layer3's others)     ``layer4``
  VGG16           ``SPG_A_1`` (conv4), then a 3x3 stride  ``SPG_A_2`` (conv5)              ``SPG_A_3`` (two
                  2 max-pool unless 28 x 28; ``features``                                  new convs)
                  ends after pool3
  InceptionV3     ``Mixed_5d`` (and its pool)             ``Mixed_6d`` (not 6e, as         ``SPG_A3_2b`` +
                                                          upstream)                        dropout
  ==============  ======================================  ===============================  =================

  and the class layer ``SPG_A4`` (``SPG_A_4`` for VGG16), a 1x1 convolution whose global average is the logits;
* training, for the ground-truth class: the attention = its ``SPG_A4`` map, upsampled to 224 x 224 and min-max
  normalised; the fused attention = the mean of the sigmoids of B1 and B2 (upsampled). Three pseudo-label
  masks (``get_mask``: 1 above ``high``, or above 0.7 x the max where fewer than 30 pixels are, then 0 below
  ``low``, 255 = ignored elsewhere) give three BCE losses on the upsampled logits: B2 from the attention
  (``spg_threshold_1h/1l``), B1 from B2's sigmoid (``2h/2l``), C from the fused attention (``3h/3l``);
  loss = CE + the three;
* test: the map (``wsol.cams`` method ``spg``) is the target's ``SPG_A4`` map, bias included.

In wsol F is ``SPG_A4``'s input and ``head.fc`` is ``SPG_A4`` (GAP and a 1x1 convolution commute), so
``model(x)`` is upstream's logits, the Grad-CAM family works on F and ``cam`` is SPG's map less its bias
``b_k`` (a constant: the same map after min-max normalisation); ``spg`` adds the bias back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsol.errors import WSOLError
from wsol.methods.base import TrainingMethod
from wsol.methods.protocol import (
    INCEPTION_MIXED_6,
    INCEPTION_STEM,
    RESNET_STEM,
    adopt,
    check_unit,
    class_layer,
    class_maps,
    conv_relu,
    feature_info,
    inception_mixed_6a,
    inception_to_5d,
    init_new,
    is_large,
    normalize_tensor,
    protocol_arch,
    resnet_channels,
    resnet_stem,
)

MASK_SIZE = 224  # upstream upsamples every map to 224 x 224 (the protocol's crop), whatever the input size
IGNORE = 255.0  # a pseudo-label pixel that no loss sees
FEW_PIXELS = 30  # fewer foreground pixels than this: threshold at 0.7 x the map's max instead
THRESHOLD_KEYS = ("spg_threshold_1h", "spg_threshold_1l", "spg_threshold_2h", "spg_threshold_2l",
                  "spg_threshold_3h", "spg_threshold_3l")


class SpgNetwork(nn.Module):
    """A protocol backbone with SPG's layers; ``forward_features`` is F, the input of ``SPG_A4``."""

    channels: int  # of F

    def _add_side(self, b_in: tuple[int, int], width: int, f_channels: int, reduction: int, last: str,
                  source: nn.Module) -> None:
        """``SPG_B_1a`` / ``SPG_B_2a`` (inputs ``b_in``) -> ``SPG_B_shared`` -> 1 channel; ``SPG_C`` on F;
        Xavier-initialised as upstream."""
        self.SPG_B_1a = nn.Sequential(*conv_relu(b_in[0], width))
        self.SPG_B_2a = nn.Sequential(*conv_relu(b_in[1], width))
        self.SPG_B_shared = nn.Sequential(*conv_relu(width, width), nn.Conv2d(width, 1, kernel_size=1))
        self.SPG_C = nn.Sequential(*conv_relu(f_channels, 512), nn.Conv2d(512, 1, kernel_size=1))
        init_new([*self.SPG_B_1a.modules(), *self.SPG_B_2a.modules(), *self.SPG_B_shared.modules(),
                  *self.SPG_C.modules()], "xavier")
        self.feature_info = feature_info(self, source, {"module": last, "num_chs": f_channels,
                                                        "reduction": reduction})

    def stages(self, x: Tensor, branches: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(F, B1 logits, B2 logits)``; the side branches only when ``branches``."""
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x, branches=False)[0]


class ResNetSpg(SpgNetwork):
    """``wsol/resnet.py`` ResNetSpg: layer3 split into ``SPG_A1`` (its first block) and ``SPG_A2``."""

    channels = 2048  # ResNet50's; another ResNet's layer4 width is set per instance

    def __init__(self, base: nn.Module, large: bool) -> None:
        super().__init__()
        adopt(self, base, (*RESNET_STEM, "layer1", "layer2"))
        blocks = list(base.layer3.children())
        self.SPG_A1 = nn.Sequential(blocks[0])
        self.SPG_A2 = nn.Sequential(*blocks[1:])
        adopt(self, base, ("layer4",))
        mid = resnet_channels(base, "layer3")
        self.channels = resnet_channels(base, "layer4")
        self._add_side((mid, mid), 1024, self.channels, 8 if large else 16, "layer4", base)

    def stages(self, x: Tensor, branches: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x = self.SPG_A1(self.layer2(self.layer1(resnet_stem(self, x))))
        b1 = self.SPG_B_shared(self.SPG_B_1a(x)) if branches else None
        x = self.SPG_A2(x)
        b2 = self.SPG_B_shared(self.SPG_B_2a(x)) if branches else None
        return self.layer4(x), b1, b2


class VggSpg(SpgNetwork):
    """``wsol/vgg.py`` VggSpg: ``features`` to pool3, conv4 as ``SPG_A_1``, conv5 as ``SPG_A_2``, new ``SPG_A_3``."""

    channels = 512

    def __init__(self, base: nn.Module, large: bool) -> None:
        super().__init__()
        self.large_feature_map = large
        layers = list(base.features.children())  # torchvision indices: conv4 at 17-22, pool4 23, conv5 24-29
        self.features = nn.Sequential(*layers[:17])
        self.SPG_A_1 = nn.Sequential(*layers[17:23])
        self.SPG_A_2 = nn.Sequential(*layers[24:30])
        self.SPG_A_3 = nn.Sequential(*conv_relu(512, 512), *conv_relu(512, 512))
        init_new(self.SPG_A_3.modules(), "xavier")
        self._add_side((512, 512), 512, self.channels, 8 if large else 16, "SPG_A_3", base)

    def stages(self, x: Tensor, branches: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x = self.SPG_A_1(self.features(x))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        b1 = self.SPG_B_shared(self.SPG_B_1a(x)) if branches else None
        x = self.SPG_A_2(x)
        b2 = self.SPG_B_shared(self.SPG_B_2a(x)) if branches else None
        return self.SPG_A_3(x), b1, b2


class InceptionSpg(SpgNetwork):
    """``wsol/inception.py`` InceptionSpg: the WSOL InceptionV3 with dropout before and after each ``SPG_A3``."""

    channels = 1024

    def __init__(self, base: nn.Module, large: bool) -> None:
        super().__init__()
        self.large_feature_map = large
        adopt(self, base, (*INCEPTION_STEM, *INCEPTION_MIXED_6, "drop", "SPG_A3_1b", "SPG_A3_2b"))
        self._add_side((288, 768), 512, self.channels, 8 if large else 16, "SPG_A3_2b", base)

    def stages(self, x: Tensor, branches: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x = inception_to_5d(self, x, self.large_feature_map)
        b1 = self.SPG_B_shared(self.SPG_B_1a(x)) if branches else None
        x = self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(inception_mixed_6a(self, x))))
        b2 = self.SPG_B_shared(self.SPG_B_2a(x)) if branches else None  # upstream feeds Mixed_6d's output
        x = self.SPG_A3_1b(self.drop(self.Mixed_6e(x)))
        return self.drop(self.SPG_A3_2b(self.drop(x))), b1, b2


NETWORKS: dict[str, type[SpgNetwork]] = {"resnet50": ResNetSpg, "resnet": ResNetSpg, "vgg16": VggSpg,
                                         "inception_v3": InceptionSpg}
#: Trained with the classifier learning rate, as wsolevaluation's ``_FEATURE_PARAM_LAYER_PATTERNS`` (which for
#: ResNet50 also keeps SPG_A4 at the backbone's; here ``head.fc`` = SPG_A4 always takes 10x).
NEW_LAYERS = {"resnet50": ("layer4",), "resnet": ("layer4",),
              "vgg16": ("SPG_A_1", "SPG_A_2", "SPG_A_3", "SPG_B_1a", "SPG_B_2a", "SPG_B_shared", "SPG_C"),
              "inception_v3": ("SPG_A3_1b", "SPG_A3_2b", "SPG_B_1a", "SPG_B_2a", "SPG_B_shared", "SPG_C")}


@dataclass
class SpgOutput:
    """One SPG forward pass: the dict of upstream's ``forward`` (``feat_map`` = ``maps``)."""

    logits: Tensor
    maps: Tensor
    logits_b1: Tensor
    logits_b2: Tensor
    logits_c: Tensor
    attention: Tensor
    fused_attention: Tensor


def upsample(x: Tensor) -> Tensor:
    """``nn.Upsample(size=(224, 224), mode='bilinear')`` (``align_corners=False``)."""
    return F.interpolate(x, size=(MASK_SIZE, MASK_SIZE), mode="bilinear", align_corners=False)


def spg_network(model: nn.Module) -> SpgNetwork:
    """The SPG backbone of ``model``, or a one-line error for a model that is not an SPG network."""
    net = getattr(model, "backbone", None)
    if not isinstance(net, SpgNetwork):
        raise WSOLError(f"SPG's map needs a model trained with method.name=spg (its SPG_A4 layer); "
                        f"{getattr(model, 'name', '') or type(model).__name__!r} is not one: use another map")
    return net


def spg_forward(model: nn.Module, images: Tensor, labels: Tensor | None = None) -> SpgOutput:
    """Every SPG output, with the attention of ``labels`` (the top-1 when None): ``forward`` and
    ``compute_attention``."""
    net = spg_network(model)
    f, b1, b2 = net.stages(images, branches=True)
    f = model.feature_layer(f)
    maps = class_maps(model, f)
    logits = maps.mean(dim=(2, 3))
    if labels is None:
        labels = logits.detach().argmax(dim=1)
    attention, fused = spg_attention(maps, labels, b1, b2)
    return SpgOutput(logits, maps, b1, b2, net.SPG_C(f), attention, fused)


def spg_attention(maps: Tensor, labels: Tensor, logits_b1: Tensor, logits_b2: Tensor) -> tuple[Tensor, Tensor]:
    """``compute_attention``: the label's class map upsampled to 224 and min-max normalised (B, 1, 224, 224), and
    the fused attention ``(sigmoid(B1) + sigmoid(B2)) / 2`` upsampled; both detached."""
    picked = maps.detach()[torch.arange(maps.shape[0], device=maps.device), labels.to(maps.device)]
    attention = normalize_tensor(upsample(picked.unsqueeze(1)))  # upsampling is per channel: pick, then upsample
    fused = (torch.sigmoid(upsample(logits_b1.detach())) + torch.sigmoid(upsample(logits_b2.detach()))) / 2.0
    return attention, fused


def spg_mask(attention: Tensor, high: float, low: float) -> Tensor:
    """Pixel pseudo-labels (B, 1, H, W) of ``attention`` (B, 1, H, W): 1 where ``> high`` (or, for an image with
    fewer than 30 such pixels, ``> 0.7 x`` its max), then 0 where ``< low``, 255 (ignored) elsewhere:
    ``get_mask`` / ``mask_fg`` / ``mask_bg``."""
    b = attention.shape[0]
    fg = attention > high
    few = fg.flatten(1).sum(dim=1) < FEW_PIXELS
    fallback = attention > attention.flatten(1).amax(dim=1).view(b, 1, 1, 1) * 0.7
    fg = torch.where(few.view(b, 1, 1, 1), fallback, fg)
    mask = torch.full_like(attention, IGNORE)
    mask[fg] = 1.0
    mask[attention < low] = 0.0
    return mask


def attention_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean BCE-with-logits over the pixels of ``mask`` that are not ignored: ``loss_attention``."""
    keep = mask.reshape(-1) < IGNORE
    return F.binary_cross_entropy_with_logits(logits.reshape(-1)[keep], mask.reshape(-1)[keep].detach())


def spg_loss(out: SpgOutput, labels: Tensor, thresholds: tuple[tuple[float, float], ...]) -> Tensor:
    """CE + the three self-produced guidance losses: ``get_loss`` of ``wsol/method/spg.py``."""
    (h1, l1), (h2, l2), (h3, l3) = thresholds
    b2_sigmoid = torch.sigmoid(upsample(out.logits_b2))
    return (F.cross_entropy(out.logits, labels)
            + attention_loss(upsample(out.logits_b2), spg_mask(out.attention, h1, l1))
            + attention_loss(upsample(out.logits_b1), spg_mask(b2_sigmoid, h2, l2))
            + attention_loss(upsample(out.logits_c), spg_mask(out.fused_attention, h3, l3)))


class SPG(TrainingMethod):
    """SPG's layers on the protocol's ResNet50 / VGG16 / InceptionV3; loss CE + three pixel BCEs."""

    name = "spg"
    map_method = "spg"

    @classmethod
    def check(cls, options: Any) -> None:
        check_unit(options, THRESHOLD_KEYS)

    def thresholds(self) -> tuple[tuple[float, float], ...]:
        """``((1h, 1l), (2h, 2l), (3h, 3l))``: wsolevaluation's ``spg_thresholds``."""
        values = [float(getattr(self.options, key)) for key in THRESHOLD_KEYS]
        return tuple(zip(values[::2], values[1::2]))

    def setup(self, model: nn.Module) -> None:
        from wsol.models.heads import LinearHead

        arch = protocol_arch(model, self.name)
        net = NETWORKS[arch](model.backbone, is_large(model.backbone, arch))
        model.backbone = net
        model.head = LinearHead(class_layer(net.channels, model.num_classes, "xavier"), model.head.pool)
        model.new_layers = NEW_LAYERS[arch]
        model.external_key_map = {("SPG_A_4." if arch == "vgg16" else "SPG_A4."): "head.fc."}

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        out = spg_forward(model, images, labels)
        return spg_loss(out, labels, self.thresholds()), out.logits
