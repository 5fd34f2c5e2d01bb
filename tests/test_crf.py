"""Dense-CRF refinement of score maps: equal to a brute-force mean field, and it snaps maps to colour edges."""

from __future__ import annotations

import pytest
import torch

from wsol.errors import WSOLError
from wsol.maps.crf import crf_refine


def brute_force_mean_field(image, score_map, iterations, sigma_rgb, sigma_xy, w_app, sigma_smooth, w_smooth):
    """Textbook mean field for a 2-label Potts dense CRF, kernels as explicit N x N matrices."""
    h, w = score_map.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pos = torch.stack([xs.flatten(), ys.flatten()], 1)
    rgb = image.double().flatten(1).T
    d_app = torch.cdist(pos, pos) ** 2 / sigma_xy**2 + torch.cdist(rgb, rgb) ** 2 / sigma_rgb**2
    k = w_app * torch.exp(-d_app / 2) + w_smooth * torch.exp(-torch.cdist(pos, pos) ** 2 / sigma_smooth**2 / 2)
    k.fill_diagonal_(0)
    p = score_map.double().flatten().clamp(1e-5, 1 - 1e-5)
    unary = torch.stack([torch.log(1 - p), torch.log(p)], 1)
    q = unary.softmax(1)
    for _ in range(iterations):
        q = (unary + k @ q).softmax(1)  # Potts: label l gains w * sum_j k_ij Q_j(l)
    return q[:, 1].reshape(h, w)


def test_equals_brute_force_mean_field():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 9, 11, generator=gen) * 255
    maps = torch.rand(1, 9, 11, generator=gen)
    ours = crf_refine(image, maps, iterations=4, sigma_rgb=40.0, sigma_xy=5.0, bilateral_weight=2.0,
                      smooth_sigma_xy=1.5, smooth_weight=1.0, downsample=1)
    expected = brute_force_mean_field(image[0], maps[0], 4, 40.0, 5.0, 2.0, 1.5, 1.0)
    torch.testing.assert_close(ours[0].double(), expected, atol=1e-5, rtol=1e-4)


def test_refined_map_snaps_to_the_colour_edge():
    """A blurry map spilling over an object's edge: after the CRF its foreground follows the edge."""
    h, w = 40, 40
    image = torch.zeros(1, 3, h, w)
    image[..., 20:] = 255.0  # the object: the right half, white on black
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(1, h, w)
    maps = torch.sigmoid((xs - 14.0) / 4.0)  # half-way at x = 14, six pixels into the background
    truth = torch.zeros(1, h, w, dtype=torch.bool)
    truth[..., 20:] = True

    def iou(mask):
        return ((mask & truth).sum() / (mask | truth).sum()).item()

    refined = crf_refine(image, maps, downsample=1, sigma_xy=10.0)
    assert iou(maps > 0.5) < 0.85
    assert iou(refined > 0.5) > 0.97
    assert refined.shape == maps.shape and refined.min() >= 0 and refined.max() <= 1


def test_downsampled_grid_returns_the_input_resolution():
    image = torch.rand(2, 3, 30, 45) * 255
    maps = torch.rand(2, 30, 45)
    assert crf_refine(image, maps, downsample=4).shape == (2, 30, 45)


def test_bad_maps_are_errors():
    with pytest.raises(WSOLError, match=r"\[0, 1\]"):
        crf_refine(torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 2.0))
    with pytest.raises(WSOLError, match="must be \\(B, H, W\\)"):
        crf_refine(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 4))


def test_localize_with_crf(tmp_path):
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from wsol.cli import app

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["localize", str(folder), "--out", str(out), "--crf", "-q", "--workers", "0"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and json.loads((out / "run.json").read_text())["crf"] is True
