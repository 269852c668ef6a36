"""The synthetic dataset generator: format, determinism, the partial-target rule, the cues."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.warp import transform as warp_transform

from rts.cli import main as cli_main
from rts.authoring import synth_render as render
from rts.authoring.synth import PRESETS, REGIONS, load_outlines, partial_label, label_tile, resolve_options, synthesize
from rts.io import CRS, EXTRA_CHANNELS, METADATA_COLUMNS, PIXEL_SIZE_M, tile_paths
from workdir import REPO

ARTS = REPO.parent / "shared" / "data" / "arts" / "ARTS_main_dataset_v.0.0.7-alpha_2024-02-01.geojson"
TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    synthesize(out, preset="tiny", seed=3)
    return out


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- format


def test_rasters_follow_the_format(tiny):
    rows = _rows(tiny)
    assert len(rows) == sum(p + n for p, n in TINY.counts.values())
    expected = {"rgb": ("uint8", 3), "extra": ("float32", len(EXTRA_CHANNELS)), "label": ("uint8", 1)}
    for row in rows:
        grids = set()
        for kind, path in tile_paths(tiny, row["tile_id"]).items():
            with rasterio.open(path) as src:
                assert (src.dtypes[0], src.count) == expected[kind], path
                assert src.crs.to_string() == CRS, path
                assert src.res == (PIXEL_SIZE_M, PIXEL_SIZE_M), path
                assert src.compression.value == "LZW", path
                assert (src.width, src.height) == (TINY.tile_size, TINY.tile_size), path
                assert src.transform.b == src.transform.d == 0, "north-up"
                grids.add((src.shape, tuple(src.transform)))
                if kind == "label":
                    assert set(np.unique(src.read())) <= {0, 1, 255}, path
                if kind == "extra":
                    assert np.isfinite(src.read()).all(), path
        assert len(grids) == 1, f"{row['tile_id']}: RGB, EXTRA and label grids differ"
        assert re.fullmatch(r"[a-z-]+_\d{3}_\d{3}", row["tile_id"])


def test_metadata_splits_and_version(tiny):
    with open(tiny / "metadata.csv", newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == METADATA_COLUMNS
    rows = _rows(tiny)
    assert [r["tile_id"] for r in rows] == sorted(r["tile_id"] for r in rows)
    splits = yaml.safe_load((tiny / "splits.yaml").read_text())
    assert list(splits) == ["train", "val", "test"]
    listed = [region for regions in splits.values() for region in regions]
    assert len(listed) == len(set(listed)) == TINY.n_regions, "every region in exactly one split"
    assert {r["RegionName"] for r in rows} == set(listed)
    assert all(splits[s] for s in ("val", "test"))
    for split, (n_pos, n_neg) in TINY.counts.items():
        classes = [r["TrainClass"] for r in rows if r["RegionName"] in splits[split]]
        assert (classes.count("Positive"), classes.count("Negative")) == (n_pos, n_neg), split
    version = json.loads((tiny / "version.json").read_text())
    assert version["dataset_version"] == "2.0" and version["generator"] == "rts synth"
    assert version["options"]["preset"] == "tiny" and version["options"]["seed"] == 3
    assert not (tiny / ".rts-synth-in-progress").exists()


def test_the_project_data_check_passes(tiny):
    from rts.data.checks import check_dataset

    assert check_dataset(tiny) == []


def test_centroids_are_the_tile_centres_in_lat_lon(tiny):
    for row in _rows(tiny)[:: 7]:
        with rasterio.open(tile_paths(tiny, row["tile_id"])["label"]) as src:
            cx, cy = src.xy(src.height / 2, src.width / 2, offset="ul")
        lon, lat = warp_transform(CRS, "EPSG:4326", [cx], [cy])
        assert float(row["centroid_lat"]) == pytest.approx(lat[0], abs=2e-6)
        assert float(row["centroid_lon"]) == pytest.approx(lon[0], abs=2e-6)
        assert 66.0 < lat[0] < 81.0, "an Arctic location"


def test_neighbouring_tiles_share_edges(tiny):
    """Tile (r, c + 1) starts where tile (r, c) ends: one fixed grid per region."""
    ids = {r["tile_id"] for r in _rows(tiny)}
    pairs = 0
    for tid in sorted(ids):
        slug, r, c = tid.rsplit("_", 2)
        right = f"{slug}_{r}_{int(c) + 1:03d}"
        if right in ids:
            with rasterio.open(tile_paths(tiny, tid)["rgb"]) as a, rasterio.open(tile_paths(tiny, right)["rgb"]) as b:
                assert b.transform.c == pytest.approx(a.transform.c + a.width * PIXEL_SIZE_M)
                assert b.transform.f == pytest.approx(a.transform.f)
            pairs += 1
    assert pairs > 0


# ----------------------------------------------------------------------------- classes and labels


def test_positives_have_rts_and_negatives_have_none(tiny):
    for row in _rows(tiny):
        label = rasterio.open(tile_paths(tiny, row["tile_id"])["label"]).read(1)
        if row["TrainClass"] == "Positive":
            assert (label == 1).any(), row["tile_id"]
            assert row["UIDs"], row["tile_id"]
        else:
            assert not label.any(), f"{row['tile_id']}: negative tile with RTS pixels"
            assert row["UIDs"] == ""


@pytest.mark.parametrize(
    ("floor_px", "headwall_px", "expected"),
    [
        (0, 0, 0),  # not in the tile
        (500, 40, 1),  # both parts inside
        (500, 0, 255),  # only the floor inside
        (0, 40, 255),  # only the headwall inside
        (500, 2, 255),  # a 2-pixel sliver of scarp is not a visible headwall
        (4, 4, 1),  # the smallest visible parts
    ],
)
def test_partial_label_table(floor_px, headwall_px, expected):
    assert partial_label(floor_px, headwall_px, min_part_px=4) == expected


def test_rts_cut_by_the_tile_edge():
    """One RTS across two 64 px tiles: headwall in the left tile only (cols 40-45)."""
    instance = np.zeros((64, 128), np.int32)
    part = np.zeros((64, 128), np.uint8)
    instance[10:50, 40:100] = 7
    part[10:50, 40:46] = render.HEADWALL
    part[10:50, 46:100] = render.FLOOR
    instance[0:8, 120:128] = 9  # a second RTS, headwall and floor both in the right tile
    part[0:8, 120:122], part[0:8, 122:128] = render.HEADWALL, render.FLOOR
    left, right = label_tile(instance[:, :64], part[:, :64]), label_tile(instance[:, 64:], part[:, 64:])
    assert set(np.unique(left[instance[:, :64] == 7])) == {1}
    assert set(np.unique(right[instance[:, 64:] == 7])) == {255}
    assert set(np.unique(right[instance[:, 64:] == 9])) == {1}
    assert not left[instance[:, :64] == 0].any() and not right[instance[:, 64:] == 0].any()


# ----------------------------------------------------------------------------- appearance


@pytest.fixture(scope="module")
def block() -> tuple[render.Block, render.RegionStyle]:
    style = render.make_style(np.random.default_rng([5, 0]))
    return render.render_block(np.random.default_rng([5, 1]), style, 64, 4, positive=True), style


def test_rts_floor_is_barren_and_low(block):
    b, _ = block
    ndvi, re_ = b.extra[0], b.extra[2]
    floor = b.part == render.FLOOR
    background = (b.instance == 0) & (b.hard == 0)
    assert floor.sum() > 500 and background.sum() > 1000
    assert ndvi[floor].mean() < ndvi[background].mean() - 0.15
    assert re_[floor].mean() < re_[background].mean() - 0.5
    assert b.rgb[:, floor].mean() > b.rgb[:, background].mean() + 20, "the floor is bright"


def test_headwall_is_dark_in_shaded_relief_and_rgb(block):
    b, _ = block
    sr = b.extra[3]
    headwall, floor = b.part == render.HEADWALL, b.part == render.FLOOR
    background = (b.instance == 0) & (b.hard == 0)
    assert sr[headwall].mean() < sr[background].mean() - 15
    assert sr[headwall].mean() < sr[floor].mean() - 15
    assert b.rgb[:, headwall].mean() < b.rgb[:, floor].mean() - 30


def test_headwall_lies_on_the_sun_side_of_the_floor(block):
    b, style = block
    az = np.radians(style.sun_azimuth_deg)
    sun = np.array([-np.cos(az), np.sin(az)])  # (row, col) direction toward the sun
    rows, cols = np.indices(b.instance.shape)
    toward_sun = []
    for rid in range(1, b.n_rts + 1):
        head = (b.instance == rid) & (b.part == render.HEADWALL)
        floor = (b.instance == rid) & (b.part == render.FLOOR)
        if head.sum() >= 10 and floor.sum() >= 10:
            d = np.array([rows[head].mean() - rows[floor].mean(), cols[head].mean() - cols[floor].mean()])
            toward_sun.append(float(d @ sun) > 0)
    assert len(toward_sun) >= 5 and all(toward_sun)


def test_dataset_cue_ndvi_lower_on_rts(tiny):
    on, off = [], []
    for row in _rows(tiny):
        if row["TrainClass"] == "Positive":
            p = tile_paths(tiny, row["tile_id"])
            label, ndvi = rasterio.open(p["label"]).read(1), rasterio.open(p["extra"]).read(1)
            on.append(ndvi[label == 1].mean())
            if (label == 0).any():
                off.append(ndvi[label == 0].mean())
    assert np.mean(on) < np.mean(off) - 0.1


# ----------------------------------------------------------------------------- determinism, CLI, options


def test_same_options_give_identical_bytes_and_cli_writes_preview(tiny, tmp_path):
    out, png = tmp_path / "again", tmp_path / "preview.png"
    assert cli_main(["synth", str(out), "--preset", "tiny", "--seed", "3", "--preview", str(png)]) == 0
    a, b = _files(tiny), _files(out)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"files differ between two identical runs: {different[:5]}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_worker_count_does_not_change_the_bytes(tiny, tmp_path):
    """Regions render in parallel processes; one process gives exactly the same files."""
    synthesize(tmp_path / "serial", preset="tiny", seed=3, workers=1)
    synthesize(tmp_path / "three", preset="tiny", seed=3, workers=3)
    a, b, c = _files(tiny), _files(tmp_path / "serial"), _files(tmp_path / "three")
    assert a == b == c


def test_another_seed_gives_another_dataset(tiny, tmp_path):
    synthesize(tmp_path / "s4", preset="tiny", seed=4, n_pos=3, n_neg=3)
    assert (tmp_path / "s4" / "metadata.csv").read_bytes() != (tiny / "metadata.csv").read_bytes()


def test_refuses_a_foreign_folder_and_replaces_its_own_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a previous 'rts synth' output"):
        synthesize(foreign, preset="tiny", n_pos=3, n_neg=3)
    assert cli_main(["synth", str(foreign), "--preset", "tiny", "--n-pos", "3", "--n-neg", "3"]) == 3
    synthesize(foreign, preset="tiny", n_pos=3, n_neg=3, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine", "only the dataset's own files are replaced"
    stale = foreign / "labels" / "stale_000_000.tif"
    stale.write_bytes(b"x")
    synthesize(foreign, preset="tiny", n_pos=3, n_neg=4)  # a previous synth output: no overwrite needed
    assert not stale.exists()
    assert len(_rows(foreign)) == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "huge"}, "unknown preset 'huge'; valid presets: demo, tiny"),
        ({"tile_size": 100}, "tile_size must be a multiple of 32"),
        ({"n_regions": 2}, "n_regions must be between 3"),
        ({"n_regions": len(REGIONS) + 1}, "n_regions must be between 3"),
        ({"n_pos": 2}, "n_pos and n_neg must be >= 3"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    args = {"preset": None, "n_pos": None, "n_neg": None, "tile_size": None, "n_regions": None} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_options(**args)


@pytest.mark.parametrize(
    ("preset", "n_pos", "n_neg", "expected"),
    [
        ("demo", None, None, {"train": (150, 4500), "val": (40, 200), "test": (40, 200)}),
        (None, 100, 40, {"train": (70, 20), "val": (15, 10), "test": (15, 10)}),
        (None, 3, 3, {"train": (1, 1), "val": (1, 1), "test": (1, 1)}),
    ],
)
def test_counts_per_split(preset, n_pos, n_neg, expected):
    assert resolve_options(preset, n_pos, n_neg, None, None)[2] == expected


# ----------------------------------------------------------------------------- real shapes


@pytest.mark.skipif(not ARTS.is_file(), reason=f"real ARTS polygons not available at {ARTS}")
def test_shapes_from_the_real_arts_file(tmp_path):
    outlines = load_outlines(ARTS)
    assert len(outlines) > 2000
    area = [0.5 * abs(np.sum(o[:-1, 0] * o[1:, 1] - o[1:, 0] * o[:-1, 1])) for o in outlines[:50]]
    np.testing.assert_allclose(area, np.pi, rtol=1e-6)  # normalised to unit equivalent radius
    out = tmp_path / "arts"
    synthesize(out, preset="tiny", n_pos=3, n_neg=3, shapes=ARTS)
    version = json.loads((out / "version.json").read_text())
    assert version["options"]["shapes"]["file"] == ARTS.name
    positives = [r for r in _rows(out) if r["TrainClass"] == "Positive"]
    assert len(positives) == 3
    for row in positives:
        assert (rasterio.open(tile_paths(out, row["tile_id"])["label"]).read(1) == 1).any()


def test_shapes_must_be_projected(tmp_path):
    lonlat = tmp_path / "lonlat.geojson"
    lonlat.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(ValueError, match="lonlat.geojson: shapes must be in EPSG:3413"):
        load_outlines(lonlat)
    with pytest.raises(ValueError, match="shapes file not found"):
        load_outlines(tmp_path / "missing.geojson")
