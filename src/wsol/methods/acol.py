"""ACoL, Adversarial Complementary Learning (Zhang et al., CVPR 2018): a second classifier learns from the
features where the first one's most discriminative region is erased.

As wsolevaluation's ``wsol/method/acol.py`` (``AcolBase._acol_logits``, ``_erase_attention``, ``get_loss``)
and its ``ResNetAcol`` / ``VggAcol`` / ``InceptionAcol``:

* the network: a trunk feature map T (ResNet50: ``layer4``; VGG16: conv5_3 with the pools turned into 3x3
  max-pools, ``M1`` stride 2 and ``M2`` stride 1 (pool4 at 28 x 28 and an added pool5), then a 3x3 stride-1
  average pool; InceptionV3: ``Mixed_6e``, without the ``SPG_A3`` layers), then two branches
  ``classifier_A`` and ``classifier_B``, each conv3x3 (C -> 1024), ReLU, conv3x3 (1024 -> 1024), ReLU,
  conv1x1 (1024 -> K); a branch's logits are the global average of its class maps;
* training: branch A's map of the label (the ground truth), min-max normalised, erases T (every channel)
  where it is ``>= acol_threshold``; branch B sees the erased T; loss = CE(A) + CE(B);
* test: the logits are branch A's; the map (``wsol.cams`` method ``acol``) is
  ``max(normalise(A_k), normalise(B_k))`` with B run on T erased by A's map of the target class k.

In wsol the classifier's feature map F is branch A's hidden map (``classifier_A`` up to its second ReLU,
1024 channels) and ``head.fc`` is A's class layer ``classifier_A.4`` (a 1x1 convolution upstream, the same
numbers as a Linear after GAP). So ``model(x)`` is upstream's eval logits, the Grad-CAM family works on F, and
the ``cam`` map is branch A's class map without its bias (``A_k - b_k``): the exact CAM of branch A, not
ACoL's map, which needs both branches (``acol``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    class_map,
    class_maps,
    conv_relu,
    feature_info,
    inception_mixed_6a,
    inception_to_5d,
    init_new,
    is_large,
    protocol_arch,
    resnet_channels,
    resnet_stem,
)

HIDDEN = 1024  # channels of the branches' hidden maps (F)


class AcolNetwork(nn.Module):
    """A protocol backbone with ACoL's two branches; ``forward_features`` is branch A's hidden map F."""

    init_mode = "xavier"  # wsolevaluation's initialize_weights mode of the new layers
    drop_threshold: float = 0.7  # acol_threshold: the erasing threshold, used in training and by the map

    def _add_branches(self, channels: int, num_classes: int, reduction: int, source: nn.Module) -> None:
        """``classifier_A`` without its class layer (that is ``head.fc``) and the whole ``classifier_B``."""
        self.classifier_A = nn.Sequential(*conv_relu(channels, HIDDEN), *conv_relu(HIDDEN, HIDDEN))
        self.classifier_B = nn.Sequential(*conv_relu(channels, HIDDEN), *conv_relu(HIDDEN, HIDDEN),
                                          nn.Conv2d(HIDDEN, num_classes, kernel_size=1))
        init_new([*self.classifier_A.modules(), *self.classifier_B.modules()], self.init_mode)
        self.feature_info = feature_info(self, source, {"module": "classifier_A", "num_chs": HIDDEN,
                                                        "reduction": reduction})

    def trunk(self, x: Tensor) -> Tensor:
        """The feature map both branches read (upstream's ``feature``)."""
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        return self.classifier_A(self.trunk(x))


class ResNetAcol(AcolNetwork):
    """``wsol/resnet.py`` ResNetAcol: the WSOL ResNet50 to ``layer4`` (2048 channels), He-initialised branches."""

    init_mode = "he"

    def __init__(self, base: nn.Module, num_classes: int, large: bool) -> None:
        super().__init__()
        adopt(self, base, (*RESNET_STEM, "layer1", "layer2", "layer3", "layer4"))
        self._add_branches(resnet_channels(base, "layer4"), num_classes, 8 if large else 16, base)

    def trunk(self, x: Tensor) -> Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(resnet_stem(self, x)))))


class VggAcol(AcolNetwork):
    """``wsol/vgg.py`` VggAcol: config ``acol`` (3x3 max-pools, no conv6), a 3x3 average pool, 512 channels."""

    def __init__(self, base: nn.Module, num_classes: int, large: bool) -> None:
        super().__init__()
        layers = list(base.features.children())  # torchvision indices, pool5 dropped; conv1_1 .. conv5_3 + ReLU
        for i in (4, 9, 16):
            layers[i] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # M1
        layers[23] = nn.MaxPool2d(kernel_size=3, stride=1 if large else 2, padding=1)  # M2 at 28 x 28, else M1
        layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))  # M2
        self.features = nn.Sequential(*layers)
        self._add_branches(512, num_classes, 8 if large else 16, base)

    def trunk(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.features(x), kernel_size=3, stride=1, padding=1)


class InceptionAcol(AcolNetwork):
    """``wsol/inception.py`` InceptionAcol: the WSOL InceptionV3 to ``Mixed_6e`` (768 channels), no dropout."""

    def __init__(self, base: nn.Module, num_classes: int, large: bool) -> None:
        super().__init__()
        self.large_feature_map = large
        adopt(self, base, INCEPTION_STEM + INCEPTION_MIXED_6)
        self._add_branches(768, num_classes, 8 if large else 16, base)

    def trunk(self, x: Tensor) -> Tensor:
        x = inception_mixed_6a(self, inception_to_5d(self, x, self.large_feature_map))
        return self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))


NETWORKS: dict[str, type[AcolNetwork]] = {"resnet50": ResNetAcol, "resnet": ResNetAcol, "vgg16": VggAcol,
                                          "inception_v3": InceptionAcol}
#: Trained with the classifier learning rate, as wsolevaluation's ``_FEATURE_PARAM_LAYER_PATTERNS`` (which for
#: ResNet50 also keeps classifier_A / B at the backbone's; here ``head.fc`` = classifier_A.4 always takes 10x).
NEW_LAYERS = {"resnet50": ("layer4",), "resnet": ("layer4",), "vgg16": ("classifier_A", "classifier_B"),
              "inception_v3": ("classifier_A", "classifier_B")}


@dataclass
class AcolOutput:
    """One ACoL forward pass: ``_acol_logits``' dict (logits, logit_b, feat_map_a, feat_map_b) and the labels
    that drove the erasing."""

    logits: Tensor
    logits_b: Tensor
    maps_a: Tensor
    maps_b: Tensor
    labels: Tensor


def erase_attention(feature: Tensor, attention: Tensor, threshold: float) -> Tensor:
    """``feature`` (B, C, h, w) set to 0 where ``attention`` (B, 1, h, w) is ``>= threshold`` (a NaN attention
    erases nothing): ``_erase_attention`` of ``wsol/method/acol.py``."""
    return feature * (~(attention >= threshold)).to(feature.dtype)


def acol_network(model: nn.Module) -> AcolNetwork:
    """The ACoL backbone of ``model``, or a one-line error for a model that is not an ACoL network."""
    net = getattr(model, "backbone", None)
    if not isinstance(net, AcolNetwork):
        raise WSOLError(f"ACoL's map needs a model trained with method.name=acol (its two branches); "
                        f"{getattr(model, 'name', '') or type(model).__name__!r} has none: use another map")
    return net


def acol_forward(model: nn.Module, images: Tensor, labels: Tensor | None = None) -> AcolOutput:
    """Both branches on ``images``: A on the trunk, B on the trunk erased by A's map of ``labels`` (the top-1
    of A when None), as ``AcolBase._acol_logits``."""
    net = acol_network(model)
    feature = net.trunk(images)
    maps_a = class_maps(model, model.feature_layer(net.classifier_A(feature)))
    logits = maps_a.mean(dim=(2, 3))
    if labels is None:
        labels = logits.detach().argmax(dim=1)
    erased = erase_attention(feature, class_map(maps_a, labels), net.drop_threshold)
    maps_b = net.classifier_B(erased)
    return AcolOutput(logits, maps_b.mean(dim=(2, 3)), maps_a, maps_b, labels)


class ACoL(TrainingMethod):
    """ACoL's branches on the protocol's ResNet50 / VGG16 / InceptionV3; loss CE(A) + CE(B)."""

    name = "acol"
    map_method = "acol"

    @classmethod
    def check(cls, options: Any) -> None:
        check_unit(options, ("acol_threshold",))

    def setup(self, model: nn.Module) -> None:
        from wsol.models.heads import LinearHead

        arch = protocol_arch(model, self.name)
        k = model.num_classes
        net = NETWORKS[arch](model.backbone, k, is_large(model.backbone, arch))
        net.drop_threshold = float(self.options.acol_threshold)
        model.backbone = net
        model.head = LinearHead(class_layer(HIDDEN, k, net.init_mode), model.head.pool)
        model.new_layers = NEW_LAYERS[arch]
        model.external_key_map = {"classifier_A.4.": "head.fc."}  # everything else: "backbone." + key

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        out = acol_forward(model, images, labels)
        return F.cross_entropy(out.logits, labels) + F.cross_entropy(out.logits_b, labels), out.logits
