"""Tile-list prediction in chunks + ``rts merge`` equals one run over the whole list."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely

from packages import ORIGIN, RedMask, make_predictor, write_package, write_scene  # noqa: E402

from rts.cli import main  # noqa: E402
from rts.inference.merge import merge_chunks  # noqa: E402
from rts.inference.predict import predict_tiles, run_predict  # noqa: E402
from rts.inference.predictor import load_predictor  # noqa: E402

T = 64  # tile list boxes are 64 px (192 m) cells; the mosaic is 3 x 4 cells with a 16 px margin


def _mosaic(tmp_path: Path, rects=()) -> Path:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 120, (3, 3 * T + 16, 4 * T + 16), dtype=np.uint8)
    for r0, c0, r1, c1 in rects:
        rgb[0, r0:r1, c0:c1] = 255
    return write_scene(tmp_path / "mosaic.tif", rgb)


def _tile_list(path: Path, cells: list[tuple[int, int]]) -> Path:
    x0, y0 = ORIGIN
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tile_id", "minx", "miny", "maxx", "maxy"])
        for r, c in cells:
            w.writerow([f"cell_{r}_{c}", x0 + c * T * 3.0, y0 - (r + 1) * T * 3.0, x0 + (c + 1) * T * 3.0, y0 - r * T * 3.0])
    return path


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.transform


def _polys(path):
    meta, _, geometry, data = pyogrio.raw.read(str(path))
    return shapely.from_wkb(geometry), dict(zip(meta["fields"], data))


ALL = [(r, c) for r in range(3) for c in range(4)]


def test_tile_list_outputs_cover_only_listed_tiles(tmp_path):
    mosaic = _mosaic(tmp_path)
    tiles = _tile_list(tmp_path / "part.csv", [(0, 0), (1, 1)])
    entry = predict_tiles(make_predictor(RedMask()), tiles, mosaic, tmp_path / "out", threshold=0.5, num_workers=0)
    prob, transform = _read(tmp_path / "out" / "part.prob.tif")
    assert prob.shape == (2 * T, 2 * T) and transform.c == ORIGIN[0] and transform.f == ORIGIN[1]
    assert (prob[:T, :T] >= 0).all() and (prob[T:, T:] >= 0).all()
    assert (prob[:T, T:] == -1).all() and (prob[T:, :T] == -1).all()  # not listed: nodata
    # passes on the mosaic grid (stride 32) touching cell (0,0): rows/cols {0, 32}; cell (1,1): {32, 64, 96}
    assert entry["tiles_total"] == 4 + 9 - 1  # pass (32, 32) touches both cells


@pytest.mark.parametrize("split", [[ALL[:4], ALL[4:]], [ALL[:5], ALL[5:9], ALL[9:]]])
def test_chunks_merged_equal_a_single_run(tmp_path, split):
    rects = [(50, 20, 90, 40), (100, 120, 110, 200)]  # both cross cell (and chunk) borders
    mosaic = _mosaic(tmp_path, rects)
    predictor = load_predictor(write_package(tmp_path / "pkg"))  # a random U-Net: context matters, so does the pass set
    kw = dict(threshold=0.5, num_workers=0, batch_size=1)  # batch composition changes CPU conv numerics (~1e-5)
    run_predict(tmp_path / "pkg", tmp_path / "single", tiles=str(_tile_list(tmp_path / "all.csv", ALL)), mosaic=str(mosaic), **kw)
    chunk_dirs = []
    for i, cells in enumerate(split):
        d = tmp_path / f"chunk{i}"
        run_predict(tmp_path / "pkg", d, tiles=str(_tile_list(tmp_path / f"chunk{i}.csv", cells)), mosaic=str(mosaic), **kw)
        chunk_dirs.append(d)
    merged = merge_chunks(tmp_path / "merged", chunk_dirs, blocksize=128)
    single_prob, single_t = _read(tmp_path / "single" / "all.prob.tif")
    merged_prob, merged_t = _read(tmp_path / "merged" / "merged.prob.tif")
    assert merged_t == single_t
    np.testing.assert_array_equal(merged_prob, single_prob)
    np.testing.assert_array_equal(_read(tmp_path / "merged" / "merged.mask.tif")[0], _read(tmp_path / "single" / "all.mask.tif")[0])
    g1, a1 = _polys(tmp_path / "single" / "all.gpkg")
    g2, a2 = _polys(tmp_path / "merged" / "merged.gpkg")
    assert len(g1) == len(g2) > 0 and merged["polygon_parts_dissolved"] > 0
    assert all(shapely.equals(g1, g2))
    for key in ("rts_id", "area_m2", "perimeter_m", "max_prob", "detection_scale", "tile_ids"):
        assert a1[key].tolist() == a2[key].tolist(), key
    np.testing.assert_allclose(a2["mean_prob"], a1["mean_prob"], rtol=1e-9)
    saved = json.loads((tmp_path / "merged" / "run_log.json").read_text())
    assert saved["tiles_processed"] >= 12 and saved["threshold"] == 0.5 and len(saved["chunks"]) == len(split)
    del predictor


def test_merge_refuses_chunks_with_different_thresholds(tmp_path):
    mosaic = _mosaic(tmp_path)
    for i, thr in enumerate((0.5, 0.6)):
        tiles = _tile_list(tmp_path / f"c{i}.csv", [ALL[i]])
        predict_tiles(make_predictor(RedMask()), tiles, mosaic, tmp_path / f"c{i}", threshold=thr, num_workers=0)
        (tmp_path / f"c{i}" / "run_log.json").write_text(json.dumps({"threshold": thr}))
    with pytest.raises(ValueError, match="threshold"):
        merge_chunks(tmp_path / "m", [tmp_path / "c0", tmp_path / "c1"])
    with pytest.raises(ValueError, match="run_log.json"):
        merge_chunks(tmp_path / "m", [tmp_path / "nothing"])


def test_merge_cli(tmp_path):
    mosaic = _mosaic(tmp_path, [(50, 20, 90, 40)])
    for i, cells in enumerate([ALL[:4], ALL[4:]]):
        tiles = _tile_list(tmp_path / f"c{i}.csv", cells)
        run_predict(write_package(tmp_path / "pkg"), tmp_path / f"c{i}", tiles=str(tiles), mosaic=str(mosaic), threshold=0.999, num_workers=0)
    assert main(["merge", str(tmp_path / "m"), str(tmp_path / "c0"), str(tmp_path / "c1"), "--name", "arctic"]) == 0
    with rasterio.open(tmp_path / "m" / "arctic.prob.tif") as src:
        assert src.shape == (3 * T, 4 * T) and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
