"""``rts tiles``: grid, labelling rules, EXTRA channels, resume, and builds from real public data.

Synthetic cases write tiny EPSG:3413 GeoTIFFs and GeoJSON polygons whose expected pixel counts
can be worked out by hand: tiles are 32 px of 3 m (96 m cells), and polygon edges sit on pixel
edges. The real-data cases read ``../shared/data`` and skip when it is absent.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import yaml
from affine import Affine
from rasterio.features import rasterize

from rts.authoring.tiles import (
    InputError,
    TileOptions,
    assign_splits,
    build_tiles,
    cell_transform,
    label_tile,
    tile_id,
)
from rts.authoring.tiles_sources import ExtraSource, hillshade, parse_extra, relative_elevation
from rts.authoring.tiles_vote import majority_polygons, read_experts, vote_counts, write_polygons
from rts.io import CRS, tile_paths
from workdir import REPO

SHARED = REPO.parent / "shared" / "data"
ARTS = SHARED / "arts" / "ARTS_main_dataset_v.0.0.7-alpha_2024-02-01.geojson"
PEEL = SHARED / "rts_digitization_experiment" / "Peel"
PEEL_S2 = PEEL / "imagery" / "S2_20210821T210019_20210821T210020_T08WMA.tif"

OPTS = TileOptions(tile_size=32, pixel_size=3.0)  # 96 m cells
CELL = 96.0


# ------------------------------------------------------------------------------------ helpers


def write_raster(path: Path, array: np.ndarray, x0: float, y0: float, res: float, crs: str | None = CRS, nodata=None) -> Path:
    arr = array[None] if array.ndim == 2 else array
    with rasterio.open(
        path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=arr.dtype.name,
        crs=crs, transform=Affine(res, 0, x0, 0, -res, y0), nodata=nodata,
    ) as dst:
        dst.write(arr)
    return path


def write_geojson(path: Path, features: list[tuple[shapely.Geometry, dict]], crs: str = CRS) -> Path:
    epsg = crs.split(":")[1]
    fc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}},
        "features": [{"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(g)} for g, props in features],
    }
    path.write_text(json.dumps(fc))
    return path


def sq(x0: float, y0: float, w: float, h: float | None = None) -> shapely.Polygon:
    return shapely.box(x0, y0, x0 + w, y0 + (h if h is not None else w))


@pytest.fixture()
def scene_setup(tmp_path: Path) -> dict:
    """A 3413 RGB scene over cells x 100-103, y 100-103, a planar DEM, an S2-like red/NIR pair,
    polygons (one whole RTS, one cut by a cell edge 20/80, one self-intersecting) and a CRS-less file."""
    x0, y0 = 100 * CELL, 104 * CELL  # upper-left corner of the scene
    rgb = np.stack([np.full((128, 128), v, np.uint8) for v in (10, 20, 30)])
    scene = write_raster(tmp_path / "scene.tif", rgb, x0, y0, 3.0)
    # A plane rising east 0.1 m/m on a 2 m grid with a 200 m margin: RE is 0 and SR is constant.
    xs = np.arange(x0 - 200, x0 + 384 + 200, 2.0) + 1.0
    dem = np.tile(0.1 * xs, (len(xs), 1)).astype(np.float32)
    dem_path = write_raster(tmp_path / "dem.tif", dem, x0 - 200, y0 + 200, 2.0)
    s2 = write_raster(tmp_path / "s2.tif", np.stack([np.full((40, 40), 1000, np.uint16), np.full((40, 40), 3000, np.uint16)]), x0, y0, 10.0)
    bowtie = shapely.Polygon([(100 * CELL + 9, 100 * CELL + 9), (100 * CELL + 39, 100 * CELL + 39), (100 * CELL + 39, 100 * CELL + 9), (100 * CELL + 9, 100 * CELL + 39)])
    polys = write_geojson(
        tmp_path / "rts.geojson",
        [
            (sq(101 * CELL + 3, 101 * CELL + 3, 30), {"UID": "whole", "RegionName": "north", "TrainClass": "Positive"}),
            (sq(103 * CELL - 6, 101 * CELL + 3, 30), {"UID": "cut", "RegionName": "north", "TrainClass": "Positive"}),
            (bowtie, {"UID": "bowtie", "RegionName": "south", "TrainClass": "Positive"}),
        ],
    )
    nocrs = write_raster(tmp_path / "nocrs.tif", rgb, x0, y0, 3.0, crs=None)
    return {"scene": scene, "dem": dem_path, "s2": s2, "polygons": polys, "nocrs": nocrs, "tmp": tmp_path}


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# ------------------------------------------------------------------------------- grid + labels


@pytest.mark.parametrize(
    ("ix", "iy", "tile_size", "origin", "name"),
    [
        (0, 0, 512, (0.0, 1536.0), "x0_y0"),
        (-2, 3, 512, (-3072.0, 6144.0), "x-2_y3"),
        (5, -1, 32, (480.0, 0.0), "x5_y-1"),
    ],
)
def test_cells_sit_on_a_fixed_grid(ix, iy, tile_size, origin, name):
    t = cell_transform(ix, iy, TileOptions(tile_size=tile_size))
    assert (t.c, t.f, t.a, t.e) == (origin[0], origin[1], 3.0, -3.0)
    assert tile_id(ix, iy) == name


# Cell (0, 0) of 96 m; polygons on pixel edges. Expected (count of 1, count of 255, partial polygons).
@pytest.mark.parametrize(
    ("polygons", "ones", "ignores", "n_partial"),
    [
        ([sq(3, 3, 30)], 100, 0, 0),  # whole RTS: 10 x 10 px
        ([sq(-24, 3, 30)], 0, 20, 1),  # 20% inside: headwall assumed outside -> 255
        ([sq(-12, 3, 30)], 60, 0, 0),  # 60% inside >= 0.5 -> labelled
        ([sq(-90, -90, 300)], 1024, 0, 0),  # larger than the tile and covering it -> all RTS
        ([sq(-24, 3, 30), sq(0, 3, 30)], 100, 0, 1),  # complete RTS overlaps a partial one: RTS wins
        ([], 0, 0, 0),
    ],
)
def test_partial_target_rule(polygons, ones, ignores, n_partial):
    label, complete, partial = label_tile(polygons, sq(0, 0, CELL), cell_transform(0, 0, OPTS), 32, 0.5)
    assert int((label == 1).sum()) == ones
    assert int((label == 255).sum()) == ignores
    assert partial == n_partial
    assert len(complete) == len(polygons) - n_partial


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 10}, {"train": ["a"], "val": [], "test": []}),
        ({"big": 80, "mid": 10, "small": 10}, {"train": ["big"], "val": ["mid"], "test": ["small"]}),
        # ARTS-like: Taymyr dominates; every split still gets a region
        ({"T": 1487, "BV": 365, "B": 262, "W": 197, "H": 162}, {"train": ["BV", "H", "T"], "val": ["B"], "test": ["W"]}),
        # a, b, c fill train (target 16 of 20), d goes to val (tie with test: val first),
        # then the empty test split takes train's smallest region (ties by name: a)
        ({"a": 5, "b": 5, "c": 5, "d": 5}, {"train": ["b", "c"], "val": ["d"], "test": ["a"]}),
    ],
)
def test_assign_splits_balances_whole_regions(counts, expected):
    assert assign_splits(counts) == expected


# ----------------------------------------------------------------------------- EXTRA channels


@pytest.mark.parametrize(
    ("spec", "channel", "path", "bands"),
    [
        ("ndvi=s2.tif:3,7", "ndvi", "s2.tif", [3, 7]),
        ("nir=/d/s2.tif:7", "nir", "/d/s2.tif", [7]),
        ("re=dem.tif", "re", "dem.tif", [1]),
        ("sr=dem.tif:2", "sr", "dem.tif", [2]),
    ],
)
def test_parse_extra(spec, channel, path, bands):
    src = parse_extra(spec)
    assert (src.channel, str(src.path), src.bands) == (channel, path, bands)


@pytest.mark.parametrize(("spec", "message"), [("ndvi=s2.tif:3", "RED,NIR"), ("slope=dem.tif", "unknown channel"), ("dem.tif", "CHANNEL=PATH")])
def test_parse_extra_rejects(spec, message):
    with pytest.raises(InputError, match=message):
        parse_extra(spec)


@pytest.mark.parametrize(
    ("slope_x", "azimuth", "expected"),
    [
        (0.0, 315.0, 255 * np.sin(np.deg2rad(45))),  # flat ground
        (0.1, 315.0, 255 * (0.05 + np.sin(np.deg2rad(45))) / np.sqrt(1.01)),  # rises east, sun from NW
        (0.1, 90.0, 255 * (-0.1 * np.cos(np.deg2rad(45)) + np.sin(np.deg2rad(45))) / np.sqrt(1.01)),  # faces away from an eastern sun
    ],
)
def test_hillshade_of_a_plane(slope_x, azimuth, expected):
    dem = np.tile(slope_x * np.arange(16) * 3.0, (16, 1))
    shade = hillshade(dem, 3.0, azimuth, 45.0)
    np.testing.assert_allclose(shade[4:-4, 4:-4], expected, rtol=1e-6)


def test_relative_elevation_is_zero_on_a_plane_and_finds_a_pit():
    dem = np.tile(np.arange(40.0), (40, 1))
    np.testing.assert_allclose(relative_elevation(dem, np.ones_like(dem, bool), 5)[5:-5, 5:-5], 0.0, atol=1e-9)
    dem[20, 20] -= 25.0
    re = relative_elevation(dem, np.ones_like(dem, bool), 5)
    assert re[20, 20] == pytest.approx(-25.0 + 1.0)  # the pit is 1/25 of its own window mean


# ------------------------------------------------------------------------------------- builds


def _build(s: dict, out: Path, **kw) -> dict:
    extras = [ExtraSource("ndvi", s["s2"], [1, 2]), ExtraSource("nir", s["s2"], [2]), ExtraSource("re", s["dem"], [1]), ExtraSource("sr", s["dem"], [1])]
    opts = TileOptions(tile_size=32, pixel_size=3.0, negative_distance=0.0, n_negatives=2, **kw)
    return build_tiles([s["nocrs"], s["scene"]], s["polygons"], out, options=opts, extras=extras)


def test_build_writes_a_valid_dataset(scene_setup):
    s = scene_setup
    out = s["tmp"] / "ds"
    report = _build(s, out)
    c = report["counts"]
    rows = {r["tile_id"]: r for r in csv.DictReader(open(out / "metadata.csv"))}

    # whole RTS in cell (101, 101): 100 px; the cut one is 20% in (102, 101), 80% in (103, 101)
    assert read(tile_paths(out, "x101_y101")["label"]).sum() == 100
    assert "x102_y101" not in rows and c["positive_skipped_all_ignore"] == 1
    lab = read(tile_paths(out, "x103_y101")["label"])
    assert ((lab == 1).sum(), (lab == 255).sum()) == (80, 0)
    assert c["partial_polygon_tile_pairs_ignored"] == 1
    assert rows["x103_y101"]["UIDs"] == "cut" and rows["x101_y101"]["TrainClass"] == "Positive"
    # the invalid bowtie is reported with its UID and reason, repaired, and still labelled
    assert [(p["UID"], p["reason"].split("[")[0]) for p in report["invalid_polygons"]] == [("bowtie", "Self-intersection")]
    assert rows["x100_y100"]["UIDs"] == "bowtie" and rows["x100_y100"]["RegionName"] == "south"
    # the CRS-less scene is named, not fatal
    assert report["skipped_files"] == [{"path": str(s["nocrs"]), "reason": "raster has no CRS"}]
    # negatives: as many as asked, no RTS pixels, not in a cell an RTS reaches
    negs = [t for t, r in rows.items() if r["TrainClass"] == "Negative"]
    assert len(negs) == 2 and c["negative_tiles"] == 2
    for t in negs:
        assert read(tile_paths(out, t)["label"]).max() == 0 and t not in ("x101_y101", "x102_y101", "x103_y101", "x100_y100")

    # RGB exact (constant scene), EXTRA from the analytic inputs, one shared grid
    t = tile_paths(out, "x101_y101")
    assert read(t["rgb"]).reshape(3, -1).min(1).tolist() == [10, 20, 30] and read(t["rgb"]).reshape(3, -1).max(1).tolist() == [10, 20, 30]
    extra = read(t["extra"])
    np.testing.assert_allclose(extra[0], 0.5, atol=1e-6)  # (3000 - 1000) / 4000
    np.testing.assert_allclose(extra[1], 0.3, atol=1e-6)  # 3000 / 10000
    np.testing.assert_allclose(extra[2], 0.0, atol=0.01)  # plane minus its local mean (GDAL warp ripple < 1 cm)
    np.testing.assert_allclose(extra[3], 255 * (0.05 + np.sin(np.deg2rad(45))) / np.sqrt(1.01), rtol=1e-4)
    for path in t.values():
        with rasterio.open(path) as src:
            assert (src.crs.to_string(), src.transform, src.shape, src.compression.name) == (CRS, cell_transform(101, 101, OPTS), (32, 32), "lzw")

    version = json.loads((out / "version.json").read_text())
    assert version["dataset_version"] == "2.0" and version["missing_extra_channels"] == []
    assert set(yaml.safe_load((out / "splits.yaml").read_text())) == {"train", "val", "test"}
    assert json.loads((out / "tiles_report.json").read_text())["counts"] == c

    from rts.data.checks import check_dataset

    assert check_dataset(out) == []


def test_rerun_resumes_and_rebuilds_only_missing_tiles(scene_setup):
    s = scene_setup
    out = s["tmp"] / "ds"
    first = _build(s, out)["counts"]
    label = tile_paths(out, "x101_y101")["label"]
    mtime = tile_paths(out, "x103_y101")["rgb"].stat().st_mtime_ns
    label.unlink()
    second = _build(s, out)["counts"]
    assert second["positive_written"] == 1 and second["positive_resumed"] == first["positive_written"] - 1
    assert second["negative_resumed"] == 2 and "negative_written" not in second
    assert tile_paths(out, "x103_y101")["rgb"].stat().st_mtime_ns == mtime
    assert read(label).sum() == 100
    assert (out / "metadata.csv").read_text().count("\n") == 1 + first["positive_written"] + 2
    with pytest.raises(InputError, match="other inputs/options"):
        _build(s, out, partial_min_fraction=0.3)


def test_missing_extras_are_zero_and_listed(scene_setup, tmp_path):
    s = scene_setup
    report = build_tiles([s["scene"]], s["polygons"], tmp_path / "rgb", options=TileOptions(tile_size=32, n_negatives=0))
    assert report["missing_extra_channels"] == ["ndvi", "nir", "re", "sr"]
    assert read(tile_paths(tmp_path / "rgb", "x101_y101")["extra"]).max() == 0.0
    assert json.loads((tmp_path / "rgb" / "version.json").read_text())["missing_extra_channels"] == ["ndvi", "nir", "re", "sr"]


def test_splits_file_must_cover_every_region(scene_setup, tmp_path):
    s = scene_setup
    bad = tmp_path / "splits.yaml"
    bad.write_text("train: [north]\nval: []\ntest: []\n")
    with pytest.raises(InputError, match=r"without a split \['south'\]"):
        build_tiles([s["scene"]], s["polygons"], tmp_path / "a", options=TileOptions(tile_size=32, n_negatives=0), splits=bad)
    good = tmp_path / "good.yaml"
    good.write_text("train: [north]\nval: [south]\ntest: []\n")
    build_tiles([s["scene"]], s["polygons"], tmp_path / "b", options=TileOptions(tile_size=32, n_negatives=0), splits=good)
    assert yaml.safe_load((tmp_path / "b" / "splits.yaml").read_text()) == {"train": ["north"], "val": ["south"], "test": []}


def test_cli_entry_point(scene_setup, tmp_path, capsys):
    from rts.cli import main

    s = scene_setup
    out = tmp_path / "cli"
    rc = main(["tiles", "--scene", str(s["scene"]), "--polygons", str(s["polygons"]), "--out", str(out), "--tile-size", "32",
               "--extra", f"re={s['dem']}", "--n-negatives", "1", "--negative-distance", "0"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["counts"]["positive_tiles"] == 3
    assert main(["tiles", "--scene", str(s["scene"]), "--polygons", str(tmp_path / "none.geojson"), "--out", str(out)]) == 3


# ---------------------------------------------------------------------------------- real data


needs_arts = pytest.mark.skipif(not ARTS.exists(), reason=f"ARTS build not found at {ARTS} (shared data absent)")
needs_peel = pytest.mark.skipif(not PEEL_S2.exists(), reason=f"Peel intercomparison data not found at {PEEL} (shared data absent)")


@needs_arts
def test_arts_polygons_rasterise_to_their_area():
    from rts.authoring.tiles_sources import read_polygons

    polys = read_polygons(ARTS)
    assert len(polys.geoms) == 2473 and polys.empty == 1
    assert sorted(p["UID"][:8] for p in polys.invalid) == ["83f1d8b7", "8fd7ed49", "f02567ee"]
    assert all(p["reason"].startswith("Self-intersection") for p in polys.invalid)
    rel, px, total_raster, total_vector = [], [], 0.0, 0.0
    for g in polys.geoms:  # every valid polygon of the build (~2,450 over 100 px; a few seconds)
        x0, y0, x1, y1 = g.bounds
        ox, oy = np.floor(x0 / 3) * 3, np.ceil(y1 / 3) * 3  # the dataset's 3 m grid
        shape = (int((oy - y0) // 3) + 2, int((x1 - ox) // 3) + 2)
        n = rasterize([(g, 1)], out_shape=shape, transform=Affine(3, 0, ox, 0, -3, oy), all_touched=False, dtype="uint8").sum()
        if g.area / 9 > 100:
            rel.append(abs(n * 9 - g.area) / g.area)
            px.append(g.area / 9)
            total_raster += n * 9
            total_vector += g.area
    rel, px = np.array(rel), np.array(px)
    assert len(rel) > 2400
    # Pixel-centre rasterisation is unbiased: the summed area agrees to 0.1%.
    assert abs(total_raster - total_vector) / total_vector < 0.001
    # Per polygon: within 2% for every polygon over 400 px and for 98.9% of those over 100 px. The
    # misses (100-400 px, up to 6%) are the quantisation limit of the pixel-centre rule, not a bias:
    # a 100 px polygon's outline crosses ~40 pixels, each in or out by its centre (docs/tiles.md).
    assert rel[px > 400].max() <= 0.02
    assert (rel <= 0.02).mean() >= 0.985
    assert rel.max() < 0.07


@needs_peel
def test_peel_majority_builds_a_checked_loadable_dataset(tmp_path):
    experts = read_experts(sorted((PEEL / "labels").glob("Peel_digitized_labeler*.shp")))
    assert len(experts) == 12
    majority = majority_polygons(experts)  # > 6 of 12 experts
    # every face of the overlay kept has at least 7 votes, and the majority is inside the union
    assert all(n >= 7 for f, n in vote_counts(experts) if f.intersects(majority[0]) and f.intersection(majority[0]).area > 1)
    union = shapely.union_all([g for e in experts for g in e])
    assert shapely.union_all(majority).difference(union).area < 1.0
    polys = tmp_path / "peel_majority.geojson"
    write_polygons(polys, majority, [f"peel_{i}" for i in range(len(majority))], "Peel")

    out = tmp_path / "peel"
    extras = [parse_extra(f"ndvi={PEEL_S2}:3,7"), parse_extra(f"nir={PEEL_S2}:7")]
    opts = TileOptions(tile_size=128, rgb_bands=[3, 2, 1], rgb_scale="3000", negative_distance=0.0)
    report = build_tiles([PEEL_S2], polys, out, options=opts, extras=extras)
    c = report["counts"]
    assert c["positive_tiles"] >= 5 and c["negative_tiles"] == c["positive_tiles"]
    assert report["missing_extra_channels"] == ["re", "sr"]

    from rts.data.checks import check_dataset

    assert check_dataset(out) == []

    # Labelled RTS area cannot exceed the majority area; barren slump floors have lower NDVI.
    rows = list(csv.DictReader(open(out / "metadata.csv")))
    rts_px, ndvi_rts, ndvi_bg = 0, [], []
    for r in rows:
        label, extra = read(tile_paths(out, r["tile_id"])["label"])[0], read(tile_paths(out, r["tile_id"])["extra"])
        rts_px += int((label == 1).sum())
        ndvi_rts.append(extra[0][label == 1])
        ndvi_bg.append(extra[0][label == 0])
    assert 0 < rts_px * 9 <= sum(p.area for p in majority)
    assert np.concatenate(ndvi_rts).mean() < np.concatenate(ndvi_bg).mean() - 0.1

    # The training dataset reads it.
    from rts.data.dataset import TileDataset
    from rts.data.normalization import Normalizer, compute_stats
    from rts.data.splits import TileRecord
    from rts.data.store import TileStore

    store = TileStore(out)
    ids = [r["tile_id"] for r in rows]
    stats = compute_stats(ids, clip_percentiles=(1.0, 99.0), sample_px_per_tile=200, dataset_version="2.0",
                          tile_loader=lambda t: (store.load(t).rgb, store.load(t).extra))
    tiles = [TileRecord(r["tile_id"], r["TrainClass"] == "Positive", r["RegionName"]) for r in rows]
    ds = TileDataset(store, tiles, Normalizer(stats, ["ndvi", "nir"]))
    item = ds[next(i for i, t in enumerate(tiles) if t.positive)]
    assert tuple(item["image"].shape) == (5, 128, 128) and bool(item["target"].sum() > 0)


@needs_peel
def test_expert_agreement_is_scored_with_rts_score(tmp_path):
    """The README's worked example: each Peel expert scored against the majority by `rts score`."""
    import subprocess
    import sys

    script = REPO / "scripts" / "expert_agreement.py"
    proc = subprocess.run([sys.executable, str(script), str(PEEL), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    agreement = json.loads((tmp_path / "agreement.json").read_text())
    assert agreement["experts"] == 12 and agreement["majority_objects"] == 9
    scores = sorted((tmp_path / "scores").glob("Peel_labeler*.json"))
    assert len(scores) == 12
    # The table is read from rts score's own JSON: one positive tile, no negatives.
    for path in scores:
        result = json.loads(path.read_text())
        assert result["n_pos_tiles"] == 1 and result["n_neg_tiles"] == 0
        row = agreement["scores"][path.stem]
        assert row["pixel_iou"] == result["unweighted"]["iou_rts"]
        assert row["object_recall"] == result["unweighted"]["obj_iou0.3_recall"]
    # Cross-check one expert by hand: pixel IoU of the two rasters written for rts score.
    expert = rasterio.open(tmp_path / "experts" / "Peel_labeler01" / "Peel.tif").read(1) > 0.5
    majority = rasterio.open(tmp_path / "majority" / "Peel.tif").read(1) == 1
    assert agreement["scores"]["Peel_labeler01"]["pixel_iou"] == pytest.approx((expert & majority).sum() / (expert | majority).sum())
    # The README table (rounded): mean pixel IoU 0.70, object P 0.89, R 0.81 at IoU 0.3.
    rows = agreement["scores"].values()
    assert np.mean([r["pixel_iou"] for r in rows]) == pytest.approx(0.70, abs=0.005)
    assert np.mean([r["object_precision"] for r in rows]) == pytest.approx(0.89, abs=0.005)
    assert np.mean([r["object_recall"] for r in rows]) == pytest.approx(0.81, abs=0.005)
    assert "| mean | | | 0.70 | 0.89 | 0.81 |" in proc.stdout


@needs_peel
def test_peel_dataset_trains_and_evaluates_end_to_end(tmp_path):
    """Real labels through the real pipeline: rts tiles -> prepare -> train (a few steps) -> evaluate."""
    import sys

    from workdir import make_workdir, run

    experts = read_experts(sorted((PEEL / "labels").glob("Peel_digitized_labeler*.shp")))
    majority = majority_polygons(experts)
    polys = tmp_path / "peel_majority.geojson"
    write_polygons(polys, majority, [f"peel_{i}" for i in range(len(majority))], "Peel")
    # Three regions (west / centre / east strips cut between RTS), so the splits are spatial blocks.
    xs = sorted(p.centroid.x for p in majority)
    cuts = [(xs[len(xs) // 3 - 1] + xs[len(xs) // 3]) / 2, (xs[2 * len(xs) // 3 - 1] + xs[2 * len(xs) // 3]) / 2]
    y0, y1, far = min(p.bounds[1] for p in majority) - 5e4, max(p.bounds[3] for p in majority) + 5e4, 5e4
    strips = [shapely.box(xs[0] - far, y0, cuts[0], y1), shapely.box(cuts[0], y0, cuts[1], y1), shapely.box(cuts[1], y0, xs[-1] + far, y1)]
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3413"}},
        "features": [{"type": "Feature", "properties": {"name": f"Peel {n}"}, "geometry": shapely.geometry.mapping(g)}
                     for n, g in zip(["west", "centre", "east"], strips)],
    }))
    out = tmp_path / "peel"
    opts = TileOptions(tile_size=64, rgb_bands=[3, 2, 1], rgb_scale="3000", negative_distance=0.0)
    build_tiles([PEEL_S2], polys, out, options=opts, regions=regions, region_field="name",
                extras=[parse_extra(f"ndvi={PEEL_S2}:3,7"), parse_extra(f"nir={PEEL_S2}:7")])
    from rts.data.checks import check_dataset

    assert check_dataset(out) == []
    splits = yaml.safe_load((out / "splits.yaml").read_text())
    assert all(splits[s] for s in ("train", "val", "test")), splits

    wd = make_workdir(tmp_path / "wd", {"data.extra_channels": ["ndvi", "nir"], "train.max_epochs": 2, "train.steps_per_epoch": 3}, data=out)
    run([sys.executable, "-m", "stages.prepare"], wd)
    run([sys.executable, "-m", "stages.train"], wd)
    run([sys.executable, "-m", "stages.evaluate"], wd)
    train = json.loads((wd / "metrics" / "train.json").read_text())
    assert train["steps"] == 6
    ev = json.loads((wd / "metrics" / "evaluate.json").read_text())
    assert ev["val_realistic"]["n_pos_tiles"] > 0 and ev["val_realistic"]["n_neg_tiles"] > 0


def test_cli_logs_tile_progress_off_a_terminal(scene_setup, tmp_path, capsys, monkeypatch):
    from rts.cli import main

    monkeypatch.setenv("RTS_PROGRESS_INTERVAL", "0")
    s = scene_setup
    assert main(["tiles", "--scene", str(s["scene"]), "--polygons", str(s["polygons"]), "--out", str(tmp_path / "cli"),
                 "--tile-size", "32", "--n-negatives", "2", "--negative-distance", "0"]) == 0
    err = capsys.readouterr().err
    assert "INFO rts.progress: positive tiles: 1/4 cells (25%), " in err and ", ETA " in err  # 4 cells, one all-ignore
    assert "INFO rts.progress: positive tiles: 4/4 cells in " in err
    assert "INFO rts.progress: negative tiles: 2/2 tiles in " in err
