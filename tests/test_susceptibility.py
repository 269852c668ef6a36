"""Susceptibility filter: hand-made layers remove exactly the expected objects and area.

Rasters are tiny (12-160 px) GeoTIFFs in EPSG:3413 (one in EPSG:4326) written by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from datasets import REGION_ORIGINS, make_dataset  # noqa: E402
from packages import ORIGIN, RedMask, make_predictor, write_scene  # noqa: E402

from rts.errors import DataError
from rts.io import write_geotiff  # noqa: E402
from rts.susceptibility import SusceptibilityLayer, filter_probabilities, keep_mask  # noqa: E402

# ------------------------------------------------------------------------------ hand-made objects
#  A: rows 1-3, cols 1-3 (9 px), likelihood 0.8 except col 1 unknown (NaN)
#  B: rows 1-3, cols 7-9 (9 px), likelihood 0.2
#  C: rows 7-10, cols 1-5 (20 px), likelihood 0.2 on cols 1-2 (8 px), 0.8 on cols 3-5
#  D: row 7, cols 9-10 (2 px, under min_object_px = 3), likelihood 0.2
#  E: rows 5, cols 7-10 prob 0.4 (below the 0.5 threshold: never an object), likelihood 0.2


def _hand_made():
    prob = np.zeros((12, 12), np.float32)
    lik = np.full((12, 12), 0.8, np.float32)
    prob[1:4, 1:4] = 0.9
    lik[1:4, 1] = np.nan
    prob[1:4, 7:10] = 0.7
    lik[1:4, 7:10] = 0.2
    prob[7:11, 1:6] = 0.95
    lik[7:11, 1:3] = 0.2
    prob[7, 9:11] = 0.8
    lik[7, 9:11] = 0.2
    prob[5, 7:11] = 0.4
    lik[5, 7:11] = 0.2
    return prob, lik


@pytest.mark.parametrize(
    "min_likelihood, removed, clipped, pixels",
    [
        (0.5, 1, 1, 9 + 8),  # B gone, C loses cols 1-2
        (0.1, 0, 0, 0),  # 0.2 >= 0.1: nothing masked
        (0.2, 0, 0, 0),  # keep is likelihood >= min (inclusive)
        (0.9, 2, 1, 6 + 9 + 20),  # A keeps only its unknown column; B and C gone
        (0.0, 0, 0, 0),
    ],
)
def test_hand_made_layer_removes_exactly_the_expected_objects(min_likelihood, removed, clipped, pixels):
    prob, lik = _hand_made()
    filtered, stats = filter_probabilities(prob, lik, min_likelihood, 0.5, min_object_px=3)
    assert (stats.objects_before, stats.objects_removed, stats.objects_clipped) == (3, removed, clipped)
    assert stats.pixels_removed == pixels
    assert stats.area_removed_m2 == pytest.approx(9.0 * pixels)
    keep = ~(lik < min_likelihood)
    np.testing.assert_array_equal(filtered, np.where(keep, prob, 0))
    assert filtered.dtype == np.float32
    assert np.all(filtered[np.isnan(lik)] == prob[np.isnan(lik)])  # unknown likelihood: kept


def test_keep_mask_keeps_unknown_and_is_inclusive():
    lik = np.array([[np.nan, 0.49999], [0.5, 1.0]], np.float32)
    assert keep_mask(lik, 0.5).tolist() == [[True, False], [True, True]]


# ------------------------------------------------------------------------------ layers on disk


def _layer(path: Path, values: np.ndarray, *, origin=ORIGIN, pixel: float = 3.0, crs: str = "EPSG:3413", nodata=None) -> Path:
    write_geotiff(path, values.astype(np.float32), from_origin(*origin, pixel, pixel), crs=crs, nodata=nodata)
    return path


def test_coarse_layer_is_resampled_onto_the_tile_grid(tmp_path):
    # 12 m layer of 0 (west) / 1 (east): bilinear puts the 0.5 crossing exactly on the 12 m pixel edge
    values = np.zeros((4, 8), np.float32)
    values[:, 4:] = 1.0
    layer = SusceptibilityLayer(_layer(tmp_path / "s.tif", values, pixel=12.0), 0.5)
    lik = layer.likelihood(from_origin(*ORIGIN, 3.0, 3.0), (16, 32))
    assert lik.shape == (16, 32) and lik.dtype == np.float32 and np.isfinite(lik).all()
    assert np.all(lik[:, :12] == 0) and np.all(lik[:, 20:] == 1)  # far from the edge at 48 m = col 16
    keep = layer.mask(from_origin(*ORIGIN, 3.0, 3.0), (16, 32))
    assert keep[:, 16:].all() and not keep[:, :16].any()


def test_layer_in_another_crs_is_reprojected(tmp_path):
    tile = from_origin(*ORIGIN, 3.0, 3.0)
    west, south, east, north = transform_bounds("EPSG:3413", "EPSG:4326", ORIGIN[0], ORIGIN[1] - 192, ORIGIN[0] + 192, ORIGIN[1])
    res = 0.0005
    w0, n0 = west - 0.01, north + 0.01
    n_col, n_row = int((east - west + 0.02) / res) + 1, int((north - south + 0.02) / res) + 1
    lon = w0 + (np.arange(n_col) + 0.5) * res
    values = np.tile((lon - lon[0]) / (lon[-1] - lon[0]), (n_row, 1))  # linear in longitude: bilinear is exact
    layer = SusceptibilityLayer(_layer(tmp_path / "wgs84.tif", values, origin=(w0, n0), pixel=res, crs="EPSG:4326"), 0.5)
    lik = layer.likelihood(tile, (64, 64))
    for r, c in [(5, 5), (32, 40), (60, 10)]:
        x, y = tile @ (c + 0.5, r + 0.5)
        (plon,), _ = warp_transform("EPSG:3413", "EPSG:4326", [x], [y])
        assert lik[r, c] == pytest.approx((plon - lon[0]) / (lon[-1] - lon[0]), abs=2e-3)


def test_outside_extent_and_nodata_are_unknown_and_kept(tmp_path):
    values = np.full((32, 16), 0.1, np.float32)  # covers the west half of a 32 x 32 tile only
    values[:4, :4] = -1.0  # declared nodata
    layer = SusceptibilityLayer(_layer(tmp_path / "half.tif", values, nodata=-1.0), 0.5)
    tile = from_origin(*ORIGIN, 3.0, 3.0)
    lik = layer.likelihood(tile, (32, 32))
    assert np.isnan(lik[:, 17:]).all() and np.isnan(lik[:3, :3]).all()
    assert np.allclose(lik[8:, 1:15], 0.1)
    keep = layer.mask(tile, (32, 32))
    assert keep[:, 17:].all() and keep[:3, :3].all() and not keep[8:, 1:15].any()


def test_bad_layers_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(DataError, match="missing.tif"):
        SusceptibilityLayer(tmp_path / "missing.tif", 0.5)
    two = tmp_path / "two.tif"
    write_geotiff(two, np.zeros((2, 8, 8), np.float32), from_origin(*ORIGIN, 3.0, 3.0))
    with pytest.raises(ValueError, match="two.tif.*2 bands"):
        SusceptibilityLayer(two, 0.5)
    percent = SusceptibilityLayer(_layer(tmp_path / "percent.tif", np.full((8, 8), 80.0)), 0.5)
    with pytest.raises(ValueError, match=r"percent.tif.*expected \[0, 1\]"):
        percent.likelihood(from_origin(*ORIGIN, 3.0, 3.0), (8, 8))
    with pytest.raises(ValueError, match="min_likelihood"):
        SusceptibilityLayer(tmp_path / "percent.tif", 1.5)


# ------------------------------------------------------------------------------ evaluation and calibration


def _val_dataset(tmp_path: Path):
    """bravo (val): 2 positives, 4 negatives of 32 px; a bright false alarm painted on bravo_003.

    The layer (48 m pixels over bravo's row) is 0.9 except 0.1 on bravo_003's footprint, so the
    filter removes exactly the false alarm (10 x 10 px = 900 m^2) and nothing else.
    """
    from rts.data.splits import resolve_splits

    root = make_dataset(tmp_path / "ds", size=32, regions={"alpha": (2, 2), "bravo": (2, 4), "charlie": (2, 2)})
    path = root / "PLANET-RGB" / "bravo_003.tif"
    with rasterio.open(path) as src:
        rgb, transform = src.read(), src.transform
    rgb[0, 8:18, 8:18] = 255
    write_geotiff(path, rgb, transform)
    values = np.full((2, 12), 0.9, np.float32)
    values[:, 6:8] = 0.1  # tile 3 spans 288-384 m east of the origin = 48 m pixels 6 and 7
    layer_path = _layer(tmp_path / "susc.tif", values, origin=REGION_ORIGINS["bravo"], pixel=48.0)
    manifests = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    return root, manifests, layer_path


def test_evaluation_reports_with_and_without_the_filter(tmp_path):
    from rts.config import EvaluateConfig
    from rts.data.splits import read_metadata
    from rts.data.store import TileStore
    from rts.evaluation.evaluate import evaluate

    root, manifests, layer_path = _val_dataset(tmp_path)
    ev = EvaluateConfig(ratios=[200], n_bins=100, n_object_thresholds=10, min_object_px=5, batch_size=4)
    ids = [r["tile_id"] for r in read_metadata(root)]
    with SusceptibilityLayer(layer_path, 0.5) as layer:
        out = {}
        for name, lay in (("off", None), ("on", layer)):
            out[name] = evaluate(make_predictor(RedMask(), tile_size=32), TileStore(root), manifests, ids, ev,
                                 logits_dir=tmp_path / name / "eval/logits", plots_dir=tmp_path / name / "plots",
                                 metrics_path=tmp_path / name / "evaluate.json", test_metrics_path=tmp_path / name / "test.json",
                                 susceptibility=lay)
    assert "susceptibility" not in json.loads((tmp_path / "off/evaluate.json").read_text())
    s = json.loads((tmp_path / "on/evaluate.json").read_text())["susceptibility"]
    assert s["removed"] == {"objects_before": 3, "objects_removed": 1, "objects_clipped": 0, "pixels_removed": 100,
                            "tiles": 6, "tiles_skipped": 0, "area_removed_m2": 900.0}
    assert s["removed_negative_tiles"]["objects_removed"] == 1 and s["removed_positive_tiles"]["objects_removed"] == 0
    r = s["1:200"]
    # 2 true objects, 1 false alarm on a negative tile weighted 200 * 2 / 4 = 100
    assert r["object_precision_without"] == pytest.approx(2 / 102) and r["object_precision_with"] == 1.0
    assert r["object_recall_without"] == r["object_recall_with"] == 1.0
    assert s["min_likelihood"] == 0.5 and s["path"] == str(layer_path)
    # the unfiltered val-realistic metrics are the same with the layer on
    assert out["on"]["val_realistic"] == out["off"]["val_realistic"]


def test_calibration_fits_thresholds_on_filtered_probabilities(tmp_path):
    from rts.evaluation.calibrate import calibrate
    from rts.config import CalibrateConfig, EvaluateConfig
    from rts.data.store import TileStore
    from rts.evaluation.evaluate import save_logits

    root, manifests, layer_path = _val_dataset(tmp_path)
    store = TileStore(root)
    for rec in manifests["val_realistic"].tiles + manifests["test_realistic"].tiles:
        save_logits(tmp_path / "logits", rec.tile_id, store.load(rec.tile_id).rgb[0].astype(np.float32) - 127.5)
    ev = EvaluateConfig(ratios=[200], n_bins=100, n_object_thresholds=10, min_object_px=5)
    cfg = CalibrateConfig(ratios=[200], temperature_bins=500, temperature_ratio=200, target_precision=0.8)
    kw = dict(ev=ev, cfg=cfg, store=store, val_tiles=manifests["val_realistic"].tiles, test_tiles=manifests["test_realistic"].tiles,
              logits_dir=tmp_path / "logits")
    off, *_ = calibrate(**kw)
    with SusceptibilityLayer(layer_path, 0.5) as layer:
        on, test_on, *_ = calibrate(**kw, susceptibility=layer)
    assert off["temperature"] == on["temperature"]  # T calibrates the model: fitted without the filter
    assert off["thresholds"]["200"]["object"]["reached"] is False  # the false alarm weighs 100 objects
    chosen = on["thresholds"]["200"]["object"]
    assert chosen["reached"] is True and chosen["precision"] == 1.0 and chosen["recall"] == 1.0
    assert on["susceptibility"] == {"path": str(layer_path), "min_likelihood": 0.5} and "susceptibility" not in off
    assert test_on["1:200"]["threshold"] == chosen["threshold"]


# ------------------------------------------------------------------------------ rts predict


def _predict_scene(tmp_path: Path):
    """160 x 144 px scene (64 px passes, stride 32); the layer (12 m) is 1 west of col 64, 0 east."""
    rgb = np.full((3, 160, 144), 10, np.uint8)
    rgb[0, 10:30, 10:30] = 255  # kept (400 px)
    rgb[0, 10:30, 90:110] = 255  # masked entirely; cols 96-109 are covered only by skipped passes
    rgb[0, 100:120, 50:80] = 255  # clipped: cols 64-79 masked (20 x 16 = 320 px)
    scene = write_scene(tmp_path / "scene.tif", rgb)
    values = np.zeros((40, 36), np.float32)
    values[:, :16] = 1.0
    return scene, _layer(tmp_path / "susc.tif", values, pixel=12.0)


def test_predict_skips_masked_passes_and_drops_objects(tmp_path):
    from rts.inference.predict import predict_scene

    scene, layer_path = _predict_scene(tmp_path)
    with SusceptibilityLayer(layer_path, 0.5) as layer:
        entry = predict_scene(make_predictor(RedMask()), scene, tmp_path / "out", threshold=0.5, num_workers=0, blocksize=64,
                              susceptibility=layer)
    # passes at cols 64 and 96 (4 rows each) lie wholly east of col 64
    assert entry["tiles_skipped_susceptibility"] == 8 and entry["tiles_processed"] == 8
    # objects are counted where passes ran: the second square is seen only on cols 90-95 (pass at col 32)
    assert entry["susceptibility"] == {"objects_before": 3, "objects_removed": 1, "objects_clipped": 1, "pixels_removed": 120 + 320,
                                       "tiles": 8, "tiles_skipped": 8, "area_removed_m2": 9.0 * 440}
    assert entry["rts_count"] == 2 and entry["total_rts_area_m2"] == pytest.approx(9.0 * (400 + 20 * 14))
    with rasterio.open(tmp_path / "out/scene.prob.tif") as src:
        prob = src.read(1)
    with rasterio.open(tmp_path / "out/scene.mask.tif") as src:
        mask = src.read(1)
    assert prob[20, 20] == 1.0 and prob[110, 60] == 1.0
    assert prob[110, 70] == 0.0 and mask[110, 70] == 0  # run by the pass at col 32, filtered
    assert prob[20, 100] == -1.0 and mask[20, 100] == 255  # only skipped passes cover it: not analysed


def test_predict_without_layer_is_unchanged(tmp_path):
    from rts.inference.predict import predict_scene

    scene, _ = _predict_scene(tmp_path)
    entry = predict_scene(make_predictor(RedMask()), scene, tmp_path / "out", threshold=0.5, num_workers=0, blocksize=64)
    assert "susceptibility" not in entry and "tiles_skipped_susceptibility" not in entry
    assert entry["rts_count"] == 3 and entry["tiles_processed"] == 16


# ------------------------------------------------------------------------------ synthetic layer


def test_synthetic_layer_is_optional_and_matches_the_rts(tmp_path):
    import csv

    from rts.authoring.synth import synthesize
    from rts.susceptibility import tile_grid

    synthesize(tmp_path / "plain", preset="tiny", seed=3)
    assert not (tmp_path / "plain/susceptibility.vrt").exists() and not (tmp_path / "plain/susceptibility").exists()
    root = tmp_path / "ds"
    synthesize(root, preset="tiny", seed=3, susceptibility=True)
    # the tiles are byte-identical with and without the layer
    for sub in ("PLANET-RGB", "labels"):
        for f in sorted((tmp_path / "plain" / sub).iterdir())[:5]:
            assert f.read_bytes() == (root / sub / f.name).read_bytes()
    with open(root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(p.stem for p in (root / "susceptibility").iterdir()) == sorted({r["RegionName"] for r in rows})
    mean_on_rts, neg_high = [], []
    with SusceptibilityLayer(root / "susceptibility.vrt", 0.5) as layer:
        for r in rows:
            lik = layer.likelihood(*tile_grid(root, r["tile_id"]))
            assert np.isfinite(lik).all() and lik.min() >= 0 and lik.max() <= 1  # every tile inside its region's raster
            with rasterio.open(root / "labels" / f"{r['tile_id']}.tif") as src:
                label = src.read(1)
            if r["TrainClass"] == "Positive":
                mean_on_rts.append(float(lik[label == 1].mean()))
            else:
                neg_high.append(float((lik >= 0.5).mean()))
    caught = np.mean(np.array(mean_on_rts) >= 0.5)
    assert 0.75 <= caught < 1.0  # most RTS terrain is susceptible, with misses (12% of positive tiles)
    assert 0.0 < np.mean(neg_high) < 0.5  # some false alarms, mostly low
