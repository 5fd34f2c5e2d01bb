"""ACoL and SPG (``wsol.methods.acol`` / ``spg``, maps ``acol`` / ``spg``) and wsolevaluation's ACoL / SPG / ADL
checkpoints through ``wsol.models.load``, against the transcriptions in ``tests/upstream/wsolevaluation.py``.

The fast tests check the method functions on hand-made maps (ACoL's erasing, SPG's pseudo-labels and losses)
and the one-line errors; the slow ones build the three protocol networks: random-weight checkpoints in
wsolevaluation's format load with equal logits and maps, one training step gives upstream's loss and gradients,
and ``wsol train`` evaluates the method's own map.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from test_train import synth, tiny_overrides  # noqa: F401  (the tiny synthetic dataset fixture)
from upstream import wsolevaluation as wse
from wsol.cams import compute_cams
from wsol.errors import WSOLError
from wsol.methods import METHODS, check_method, get_training_method
from wsol.methods.acol import erase_attention
from wsol.methods.protocol import class_map, normalize_tensor
from wsol.methods.spg import SPG, SpgOutput, attention_loss, spg_attention, spg_loss, spg_mask
from wsol.models import build_model, load
from wsol.train.config import MethodConfig

K = 5  # classes of the test models
SIZE = 64  # input side: 4 x 4 feature maps (8 x 8 with large_feature_map)
ADL_OPTIONS = (0.75, 0.9)  # MethodConfig's adl_drop_rate / adl_threshold, for the upstream models too

BUILDERS: dict[tuple[str, str], Callable[..., nn.Module]] = {
    ("resnet50", "acol"): wse.resnet50_acol, ("vgg16", "acol"): wse.vgg16_acol,
    ("inception_v3", "acol"): wse.inception_v3_acol,
    ("resnet50", "spg"): wse.resnet50_spg, ("vgg16", "spg"): wse.vgg16_spg,
    ("inception_v3", "spg"): wse.inception_v3_spg,
    ("resnet50", "adl"): lambda k, large_feature_map: wse.resnet50_adl(k, large_feature_map, *ADL_OPTIONS),
    ("vgg16", "adl"): lambda k, large_feature_map: wse.vgg16_adl(k, large_feature_map, *ADL_OPTIONS),
    ("inception_v3", "adl"): lambda k, large_feature_map: wse.inception_v3_adl(k, large_feature_map, *ADL_OPTIONS),
}


def _images(n: int, size: int, seed: int) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a: Tensor, b: Tensor, tol: float) -> None:
    """max |a - b| <= tol x max(1, max |b|), NaN where the other is NaN."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a.isnan(), b.isnan())
    a, b = a.nan_to_num(), b.nan_to_num()
    scale = max(1.0, float(b.abs().max()))
    diff = float((a - b).abs().max())
    assert diff <= tol * scale, f"max diff {diff:.3g} > {tol * scale:.3g}"


def _one_line_error(call: Callable[[], object]) -> str:
    with pytest.raises(WSOLError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    return message


# ---------------------------------------------------------------------------------------------- ACoL erasing


def test_acol_erases_branch_a_high_region_as_upstream() -> None:
    maps = torch.zeros(2, 3, 3, 3)
    maps[0, 1] = torch.tensor([[0.0, 1.0, 2.0], [3.0, 7.0, 8.0], [10.0, 5.0, 6.0]])  # label 1: values / 10
    maps[0, 0] = torch.arange(9.0).view(3, 3).flip(0)  # other classes' maps must not matter
    maps[1, 0] = 4.0  # a flat map: normalised to NaN, which erases nothing (NaN >= t is False)
    maps[1, 2] = torch.eye(3)
    labels = torch.tensor([1, 0])
    feature = torch.rand(2, 4, 3, 3) + 0.5
    attention = class_map(maps, labels)
    _close(attention, wse.get_attention(maps, labels), 0)
    for threshold, erased in ((0.7, {(1, 1), (1, 2), (2, 0)}), (0.75, {(1, 2), (2, 0)}), (1.0, {(2, 0)})):
        ours = erase_attention(feature, attention, threshold)
        torch.testing.assert_close(ours, wse.erase_attention(feature, wse.get_attention(maps, labels), threshold),
                                   rtol=0, atol=0)
        zero = {(i, j) for i in range(3) for j in range(3) if (ours[0, :, i, j] == 0).all()}
        assert zero == erased, threshold  # every channel of the erased pixels, only there (0.7 itself included)
        torch.testing.assert_close(ours[1], feature[1])


def test_normalize_tensor_is_upstream() -> None:
    x = torch.randn(3, 4, 5, 6)
    x[1, 2] = 0.5
    _close(normalize_tensor(x), wse.normalize_tensor(x), 1e-7)


# ---------------------------------------------------------------------------------------------- SPG guidance


def _hand_made_attention() -> Tensor:
    """Image 0: 0.9 on a 10 x 10 square (100 pixels > 0.7), 0.3 on a band (ignored), 0.03 (< low) elsewhere;
    image 1: only 5 pixels at 0.9 (< 30: the threshold falls to 0.7 x 0.9), 0.68 on a 4 x 4 square, 0.5
    elsewhere."""
    att = torch.full((2, 1, 224, 224), 0.03)
    att[0, 0, 100:110, 100:110] = 0.9
    att[0, 0, 0:20, :] = 0.3
    att[1] = 0.5
    att[1, 0, 10, 10:15] = 0.9
    att[1, 0, 50:54, 50:54] = 0.68
    return att


def test_spg_pseudo_labels_from_thresholds_as_upstream() -> None:
    att = _hand_made_attention()
    ours = spg_mask(att, 0.7, 0.05)
    torch.testing.assert_close(ours, wse.get_mask(att.clone(), 0.7, 0.05), rtol=0, atol=0)
    counts = [{v: int((ours[i] == v).sum()) for v in (0.0, 1.0, 255.0)} for i in range(2)]
    assert counts[0] == {1.0: 100, 255.0: 20 * 224, 0.0: 224 * 224 - 100 - 20 * 224}
    assert counts[1] == {1.0: 5 + 16, 0.0: 0, 255.0: 224 * 224 - 21}  # the fallback keeps the 0.68 pixels too
    # the background wins over the foreground, and the thresholds are strict (> high, < low)
    both = spg_mask(att, 0.2, 0.95)
    torch.testing.assert_close(both, wse.get_mask(att.clone(), 0.2, 0.95), rtol=0, atol=0)
    assert (both == 0).all()
    edge = spg_mask(att, 0.9, 0.03)
    torch.testing.assert_close(edge, wse.get_mask(att.clone(), 0.9, 0.03), rtol=0, atol=0)
    assert int((edge[0] == 1).sum()) == 100 and int((edge[0] == 0).sum()) == 0  # 0.9 > 0.63; 0.03 not < 0.03


def test_spg_losses_as_upstream() -> None:
    gen = torch.Generator().manual_seed(3)
    b1, b2, c = (torch.randn(2, 1, 4, 4, generator=gen, requires_grad=True) for _ in range(3))
    maps = torch.randn(2, K, 4, 4, generator=gen)
    logits = maps.mean(dim=(2, 3)).requires_grad_(True)
    labels = torch.tensor([3, 1])
    attention, fused = spg_attention(maps, labels, b1, b2)
    up_attention, up_fused = wse.spg_compute_attention(maps, labels, b1, b2)
    _close(attention, up_attention, 1e-6)
    _close(fused, up_fused, 1e-6)
    out = SpgOutput(logits, maps, b1, b2, c, attention, fused)
    spg = SPG(MethodConfig(name="spg"))
    thresholds = spg.thresholds()
    assert thresholds == ((0.7, 0.01), (0.5, 0.05), (0.7, 0.1))  # wsolevaluation's defaults, in its order
    ours = spg_loss(out, labels, thresholds)
    reference = wse.spg_loss({"logits": logits, "logits_b1": b1, "logits_b2": b2, "logits_c": c,
                              "attention": up_attention, "fused_attention": up_fused}, labels, thresholds)
    _close(ours, reference, 1e-6)
    grads = torch.autograd.grad(ours, (b1, b2, c, logits))
    up_grads = torch.autograd.grad(reference, (b1, b2, c, logits))
    for g, u in zip(grads, up_grads):
        _close(g, u, 1e-6)
    mask = spg_mask(fused, 0.7, 0.1)
    up_logits = torch.randn(2, 1, 224, 224, generator=gen)
    _close(attention_loss(up_logits, mask), wse.loss_attention(nn.BCEWithLogitsLoss(), up_logits[:, 0], mask), 1e-6)


# ---------------------------------------------------------------------------------------------- registry, errors


def test_registry_checks_and_errors() -> None:
    assert {"acol", "spg"} <= set(METHODS)
    assert METHODS["acol"].map_method == "acol" and METHODS["spg"].map_method == "spg"
    for bad, key in ((MethodConfig(name="acol", acol_threshold=1.5), "method.acol_threshold"),
                     (MethodConfig(name="spg", spg_threshold_2l=-0.1), "method.spg_threshold_2l"),
                     (MethodConfig(name="spg", spg_threshold_3h=float("nan")), "method.spg_threshold_3h")):
        with pytest.raises(WSOLError, match=key):
            check_method(bad)
    check_method(MethodConfig(name="acol"))
    check_method(MethodConfig(name="spg"))
    small = build_model("resnet10t", num_classes=2)
    for name in ("acol", "spg"):
        message = _one_line_error(lambda name=name: get_training_method(MethodConfig(name=name)).setup(small))
        assert f"method.name={name}" in message and "resnet10t" in message
    x = _images(1, 32, 0)
    for name in ("acol", "spg"):  # their maps need their networks
        message = _one_line_error(lambda name=name: compute_cams(small, x, 0, name))
        assert f"method.name={name}" in message


def test_setup_refuses_other_pools_and_a_second_setup() -> None:
    gmp = build_model("vgg16", num_classes=2, pool="gmp")
    assert "model.pool" in _one_line_error(lambda: get_training_method(MethodConfig(name="acol")).setup(gmp))
    model = build_model("vgg16", num_classes=2)
    get_training_method(MethodConfig(name="spg")).setup(model)
    assert "VggSpg" in _one_line_error(lambda: get_training_method(MethodConfig(name="acol")).setup(model))


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def wse_method_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[nn.Module, Path]]:
    """``get(arch, method, large) -> (upstream model in eval mode, its wsolevaluation checkpoint)``, once each."""
    cache: dict[tuple[str, str, bool], tuple[nn.Module, Path]] = {}
    folder = tmp_path_factory.mktemp("wse_methods")

    def get(arch: str, method: str, large: bool = False) -> tuple[nn.Module, Path]:
        if (arch, method, large) not in cache:
            seed = 40 + len(cache)
            torch.manual_seed(seed)
            model = wse.randomize(BUILDERS[arch, method](K, large_feature_map=large), seed, image_size=SIZE)
            path = folder / f"{arch}_{method}{'_large' if large else ''}_best_checkpoint.pth.tar"
            wse.save_wsolevaluation_checkpoint(model, arch, path, seed=seed, image_size=SIZE)
            cache[arch, method, large] = (model.eval(), path)
        return cache[arch, method, large]

    return get


def _load(path: Path, large: bool, arch: str, method: str) -> nn.Module:
    inferable = arch == "vgg16" and method == "adl"  # the ADL configs' indices tell 28 x 28 from 14 x 14
    return load(path) if not large or inferable else load(path, large_feature_map=True)


CHECKPOINT_CASES = [(arch, method, False) for method in ("acol", "spg", "adl")
                    for arch in ("resnet50", "vgg16", "inception_v3")]
CHECKPOINT_CASES += [("resnet50", "acol", True), ("vgg16", "acol", True), ("inception_v3", "spg", True),
                     ("vgg16", "spg", True), ("vgg16", "adl", True), ("resnet50", "adl", True)]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "method", "large"), CHECKPOINT_CASES)
def test_wsolevaluation_method_checkpoint_loads(wse_method_checkpoint: Callable[..., tuple[nn.Module, Path]],
                                                arch: str, method: str, large: bool) -> None:
    upstream, path = wse_method_checkpoint(arch, method, large)
    model = _load(path, large, arch, method)
    info = model.checkpoint_info
    expected = "cam" if (arch, method) == ("inception_v3", "adl") else method  # same keys as its CAM model
    assert (info.format, info.architecture, info.num_classes, info.method) == ("wsolevaluation", arch, K, expected)
    assert not model.training
    if method != "adl" and not large:
        assert any("large_feature_map" in note for note in info.inferred)
    x = _images(2, SIZE, 30)
    labels = torch.tensor([1, 4])
    with torch.no_grad():
        ref = upstream(x)["logits"]
        logits = model(x)
        f = model.features(x)
        up_maps = upstream(x, labels, return_cam=True)
    side = 8 if large else 4
    assert f.shape[-2:] == (side, side)
    _close(logits, ref, 1e-4)
    assert torch.equal(logits.argmax(1), ref.argmax(1))
    own = compute_cams(model, x, labels, method if method != "adl" else "cam")
    _close(own.logits, ref, 1e-4)
    assert torch.equal(own.targets, labels)
    maps = own.maps
    if method == "adl" and arch != "inception_v3":
        maps = maps / f.shape[1]  # upstream's CAM averages the weighted channels
    elif method == "adl":
        maps = maps + upstream.SPG_A4.bias.detach()[labels].view(2, 1, 1)
    _close(maps, up_maps, 1e-4)
    if method in ("acol", "spg"):
        # `cam` is the class map of F without its bias: branch A's map (ACoL), SPG_A4's map (SPG)
        cam = compute_cams(model, x, labels, "cam").maps + model.head.fc.bias.detach()[labels].view(2, 1, 1)
        if method == "acol":
            with torch.no_grad():
                up_maps = upstream(x, labels)["feat_map_a"][torch.arange(2), labels]
        _close(cam, up_maps, 1e-4)
        assert torch.isfinite(compute_cams(model, x, labels, "gradcam").maps).all()  # F carries gradients
        assert compute_cams(model, x, None, method).targets.tolist() == ref.argmax(1).tolist()


def _seeded(call: Callable[[], Tensor], seed: int) -> Tensor:
    torch.manual_seed(seed)
    return call()


TRAIN_CASES = [(arch, method) for method in ("acol", "spg") for arch in ("resnet50", "vgg16", "inception_v3")]
TRAIN_CASES += [("resnet50", "adl"), ("vgg16", "adl")]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "method"), TRAIN_CASES)
def test_training_step_equals_upstream(wse_method_checkpoint: Callable[..., tuple[nn.Module, Path]],
                                       arch: str, method: str) -> None:
    upstream, path = wse_method_checkpoint(arch, method, False)
    upstream = copy.deepcopy(upstream).train()
    model = load(path).train()
    options = MethodConfig(name=method, adl_drop_rate=ADL_OPTIONS[0], adl_threshold=ADL_OPTIONS[1])
    trainer = get_training_method(options)
    x = _images(2, SIZE, 31)
    labels = torch.tensor([2, 0])
    loss, logits = _seeded(lambda: trainer.loss(model, x, labels), 5)  # the same dropout / ADL draws
    out = _seeded(lambda: upstream(x, labels), 5)
    if method == "acol":
        reference = wse.acol_loss(out, labels)
    elif method == "spg":
        reference = wse.spg_loss(out, labels, ((0.7, 0.01), (0.5, 0.05), (0.7, 0.1)))
    else:
        reference = nn.CrossEntropyLoss()(out["logits"], labels)
    assert torch.isfinite(loss)
    _close(loss, reference, 1e-4)
    _close(logits, out["logits"], 1e-4)
    loss.backward()
    reference.backward()
    if method == "acol":
        up_head = upstream.classifier_A[4]
    elif method == "spg":
        up_head = upstream.SPG_A_4 if arch == "vgg16" else upstream.SPG_A4
    else:
        up_head = upstream.fc
    _close(model.head.fc.weight.grad, up_head.weight.grad.flatten(1), 1e-4)
    first = {"resnet50": "conv1.weight", "vgg16": "features.0.weight", "inception_v3": "Conv2d_1a_3x3.conv.weight"}
    up_first = dict(upstream.named_parameters())[first[arch]].grad
    ours_first = dict(model.backbone.named_parameters())[first[arch]].grad
    _close(ours_first, up_first, 1e-3)  # through every layer, B's erasing / the side branches included
    new = {"acol": "classifier_B.0.weight", "spg": "SPG_C.0.weight", "adl": None}[method]
    if new is not None:
        _close(dict(model.backbone.named_parameters())[new].grad, dict(upstream.named_parameters())[new].grad, 1e-4)


# ---------------------------------------------------------------------------------------------- wsol train


@pytest.mark.slow
@pytest.mark.parametrize("method", ["acol", "spg"])
def test_train_evaluates_the_methods_map(method: str, synth: Path, tmp_path: Path) -> None:  # noqa: F811
    from wsol.train.config import load_config
    from wsol.train.run import train

    extra = {"method.name": method, "model.name": "vgg16", "trainer.epochs": 1, "trainer.limit_train_batches": 2,
             "data.batch_size": 3}
    config = load_config(None, tiny_overrides(synth, tmp_path, **extra))
    summary = train(config, quiet=True)
    assert method in summary["test"]  # eval.method's default `cam` became the method's own map
    best = Path(summary["best_checkpoint"])
    model = load(best)
    assert model.checkpoint_info.method == method
    x = _images(2, SIZE, 32)
    out = compute_cams(model, x, [0, 1], method)
    assert out.maps.shape == (2, 4, 4) and torch.isfinite(out.logits).all()
