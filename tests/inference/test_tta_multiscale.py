"""TTA equivariance and exact inverses; multi-scale windows from neighbouring tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

from rts.data.store import TileStore
from rts.data.windows import NeighbourWindows, crop_centre, resize, window_size
from rts.inference.multiscale import predict_multiscale
from rts.inference.tta import D4, TTA_SETTINGS, tta_logits
from rts.io import EXTRA_DIR, LABEL_DIR, RGB_DIR, write_geotiff


@pytest.mark.parametrize("name", list(D4))
def test_each_transform_inverse_is_exact(name):
    x = torch.randn(2, 3, 16, 16)
    fwd, inv = D4[name]
    assert torch.equal(inv(fwd(x)), x)
    if name != "identity":
        assert not torch.equal(fwd(x), x)


def test_d4_transforms_are_distinct():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    outs = {tuple(f(x).flatten().tolist()) for f, _ in D4.values()}
    assert len(outs) == 8


@pytest.mark.parametrize("setting", list(TTA_SETTINGS))
def test_tta_of_equivariant_model_equals_plain(setting):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 1)  # pointwise: equivariant to every D4 transform
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(tta_logits(model, x, setting), model(x).float(), rtol=1e-5, atol=1e-6)


def test_tta_of_generic_model_averages_inverted_views():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    x = torch.randn(1, 3, 10, 10)
    expected = (model(x) + torch.flip(model(torch.flip(x, (-1,))), (-1,))) / 2
    torch.testing.assert_close(tta_logits(model, x, "minimal"), expected)
    with pytest.raises(ValueError, match="standard"):
        tta_logits(model, x, "everything")


def test_multiscale_scale_one_is_plain_and_constant_model_is_constant():
    model = torch.nn.Conv2d(3, 1, 1)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(predict_multiscale(model, {1.0: x}, tile_size=32), model(x))
    const = lambda t: torch.full((t.shape[0], 1, t.shape[-2], t.shape[-1]), 0.7)  # noqa: E731
    out = predict_multiscale(const, {1.0: x, 0.5: torch.randn(1, 3, 64, 64), 0.25: torch.randn(1, 3, 128, 128)}, tile_size=32, tta="full")
    assert out.shape == (1, 1, 32, 32) and torch.allclose(out, torch.tensor(0.7))


def test_multiscale_fuses_by_maximum():
    # a model that returns its first input channel: the fused output is the max over scales
    ident = lambda t: t[:, :1]  # noqa: E731
    a = torch.zeros(1, 1, 8, 8)
    a[..., 3, 3] = 5.0
    b = torch.full((1, 1, 16, 16), 2.0)  # constant, so resizing keeps it exact
    out = predict_multiscale(ident, {1.0: a, 0.5: b}, tile_size=8)
    expected = torch.full_like(out, 2.0)
    expected[..., 3, 3] = 5.0
    torch.testing.assert_close(out, expected)
    assert window_size(512, 0.25) == 2048
    assert crop_centre(torch.arange(16.0).reshape(1, 1, 4, 4), 2).flatten().tolist() == [5, 6, 9, 10]
    assert resize(torch.ones(1, 1, 8, 8), 4).shape[-1] == 4


def _grid_dataset(root, T=8, missing=()):
    """3x3 tiles whose R band equals a distinct constant per tile (10*row + col)."""
    ids = []
    for r in range(3):
        for c in range(3):
            if (r, c) in missing:
                continue
            tid = f"t_{r}_{c}"
            tr = from_origin(1000.0 + c * T * 3.0, 5000.0 - r * T * 3.0, 3.0, 3.0)
            rgb = np.full((3, T, T), 10 * r + c, np.uint8)
            write_geotiff(root / RGB_DIR / f"{tid}.tif", rgb, tr)
            write_geotiff(root / EXTRA_DIR / f"{tid}.tif", np.zeros((4, T, T), np.float32), tr)
            write_geotiff(root / LABEL_DIR / f"{tid}.tif", np.zeros((1, T, T), np.uint8), tr)
            ids.append(tid)
    return ids


def test_neighbour_window_assembles_the_mosaic(tmp_path):
    ids = _grid_dataset(tmp_path)
    nw = NeighbourWindows(TileStore(tmp_path), ids, extra_index=[])
    w = nw.window("t_1_1", 16)  # scale 0.5: 4 px from each neighbour
    assert w.shape == (3, 16, 16)
    assert w[0, 0, 0] == 0 and w[0, 0, 15] == 2 and w[0, 15, 0] == 20 and w[0, 8, 8] == 11 and w[0, 15, 15] == 22
    assert nw.window("t_1_1", 8)[0].min() == 11


def test_neighbour_window_reflects_where_tiles_are_missing(tmp_path):
    ids = _grid_dataset(tmp_path, missing={(0, 0), (0, 1), (0, 2)})  # no row above
    nw = NeighbourWindows(TileStore(tmp_path), ids, extra_index=[])
    w = nw.window("t_1_1", 16)
    # rows 0-3 come from reflecting rows 4.. (the centre row of tiles), never from thin air
    assert set(np.unique(w[0, :4])) <= {10, 11, 12}
    np.testing.assert_array_equal(w[0, 3], w[0, 5])
    big = nw.window("t_1_1", 32)  # scale 0.25: reflect beyond the available mosaic too
    assert big.shape == (3, 32, 32)
