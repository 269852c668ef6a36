"""`rts check`: each broken dataset is reported by file and reason, all problems at once."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin


from datasets import REGION_ORIGINS, make_dataset  # noqa: E402

from rts.cli import main  # noqa: E402
from rts.data.checks import Problem, check_dataset, format_report, run_checks  # noqa: E402
from rts.io import write_geotiff, write_text_atomic  # noqa: E402

# make_dataset's default layout: alpha 4 pos + 6 neg (metadata lines 2-11), bravo 2 + 4 (12-17),
# charlie 2 + 4 (18-23); splits train=[alpha], val=[bravo], test=[charlie]. 22 tiles, 66 rasters.
N_TILES = 22
SIZE = 32


@pytest.fixture(scope="module")
def valid_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("valid") / "data", size=SIZE)


@pytest.fixture
def dataset(valid_dataset: Path, tmp_path: Path) -> Path:
    """A fresh copy of the valid dataset that a test may break."""
    return Path(shutil.copytree(valid_dataset, tmp_path / "data"))


# --- ways to break a dataset --------------------------------------------------------------------


def read(root: Path, rel: str) -> tuple[np.ndarray, object]:
    with rasterio.open(root / rel) as src:
        return src.read(), src.transform


def rewrite(root: Path, rel: str, fn: Callable[[np.ndarray], np.ndarray] = lambda a: a, transform=None, **kwargs) -> None:
    """Rewrite one raster through rts.io.write_geotiff, changing its pixels or profile."""
    array, old_transform = read(root, rel)
    write_geotiff(root / rel, fn(array.copy()), transform or old_transform, **kwargs)


def set_pixels(value, n: int, band: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    def fn(a: np.ndarray) -> np.ndarray:
        a[band].reshape(-1)[:n] = value
        return a

    return fn


def truncate(root: Path, rel: str) -> None:
    data = (root / rel).read_bytes()
    (root / rel).write_bytes(data[: len(data) // 2])


def edit_metadata(root: Path, fn: Callable[[list[dict[str, str]]], list[dict[str, str]]], columns=None) -> None:
    with open(root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = fn(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns or list(rows[0]), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(root / "metadata.csv", out.getvalue())


def set_class(tile_id: str, value: str) -> Callable[[list[dict[str, str]]], list[dict[str, str]]]:
    return lambda rows: [dict(r, TrainClass=value) if r["tile_id"] == tile_id else r for r in rows]


def write_splits(root: Path, splits: dict) -> None:
    write_text_atomic(root / "splits.yaml", yaml.safe_dump(splits))


def delete_tile(root: Path, tile_id: str) -> None:
    for folder in ("PLANET-RGB", "EXTRA", "labels"):
        (root / folder / f"{tile_id}.tif").unlink()


def rewrite_tile_pixel_size(root: Path, tile_id: str, pixel: float) -> None:
    x0, y0 = REGION_ORIGINS["alpha"]
    i = int(tile_id.split("_")[1])
    for folder in ("PLANET-RGB", "EXTRA", "labels"):
        rewrite(root, f"{folder}/{tile_id}.tif", transform=from_origin(x0 + i * SIZE * 3.0, y0, pixel, pixel))


def regrow_tile(root: Path, tile_id: str, size: int) -> None:
    """All three files of a tile at ``size`` px, consistent with each other (edge-padded)."""
    for folder in ("PLANET-RGB", "EXTRA", "labels"):
        array, transform = read(root, f"{folder}/{tile_id}.tif")
        pad = size - array.shape[1]
        write_geotiff(root / f"{folder}/{tile_id}.tif", np.pad(array, ((0, 0), (0, pad), (0, pad)), mode="edge"), transform)


def shrink_label(root: Path) -> None:
    array, transform = read(root, "labels/alpha_006.tif")
    write_geotiff(root / "labels/alpha_006.tif", array[:, :, : SIZE // 2].copy(), transform)


BREAKAGES: list[tuple[str, Callable[[Path], None], list[tuple[str, str]]]] = [
    # (case, how to break the valid dataset, every expected (file, reason fragment))
    ("truncated GeoTIFF", lambda r: truncate(r, "labels/alpha_001.tif"),
     [("labels/alpha_001.tif", "unreadable GeoTIFF (corrupt or truncated)")]),
    ("not a GeoTIFF at all", lambda r: (r / "EXTRA/bravo_002.tif").write_bytes(b"garbage" * 100),
     [("EXTRA/bravo_002.tif", "unreadable GeoTIFF")]),
    ("wrong CRS", lambda r: rewrite(r, "PLANET-RGB/alpha_002.tif", crs="EPSG:4326"),
     [("PLANET-RGB/alpha_002.tif", "CRS EPSG:4326, expected EPSG:3413")]),
    ("wrong EXTRA dtype", lambda r: rewrite(r, "EXTRA/bravo_001.tif", lambda a: a.astype(np.float64)),
     [("EXTRA/bravo_001.tif", "dtype float64, expected float32")]),
    ("wrong label dtype", lambda r: rewrite(r, "labels/charlie_000.tif", lambda a: a.astype(np.uint16)),
     [("labels/charlie_000.tif", "dtype uint16, expected uint8")]),
    ("wrong RGB band count", lambda r: rewrite(r, "PLANET-RGB/alpha_007.tif", lambda a: np.concatenate([a, a[:1]])),
     [("PLANET-RGB/alpha_007.tif", "4 bands, expected 3")]),
    ("label value 7", lambda r: rewrite(r, "labels/alpha_005.tif", set_pixels(7, 3)),
     [("labels/alpha_005.tif", "label value 7 (3 px), expected only 0, 1, 255")]),
    ("NaN in EXTRA", lambda r: rewrite(r, "EXTRA/alpha_003.tif", set_pixels(np.nan, 4, band=0)),
     [("EXTRA/alpha_003.tif", "non-finite EXTRA pixels: ndvi 4 NaN, 0 infinite")]),
    ("infinity in EXTRA", lambda r: rewrite(r, "EXTRA/alpha_004.tif", set_pixels(np.inf, 2, band=3)),
     [("EXTRA/alpha_004.tif", "non-finite EXTRA pixels: sr 0 NaN, 2 infinite")]),
    ("RGB/label shape mismatch", shrink_label,
     [("labels/alpha_006.tif", "shape 32x16 differs from PLANET-RGB/alpha_006.tif (32x32)")]),
    ("transform mismatch",
     lambda r: rewrite(r, "EXTRA/alpha_008.tif", transform=from_origin(REGION_ORIGINS["alpha"][0] + 8 * SIZE * 3.0 + 3.0, REGION_ORIGINS["alpha"][1], 3.0, 3.0)),
     [("EXTRA/alpha_008.tif", "differs from PLANET-RGB/alpha_008.tif")]),
    ("pixel size out of tolerance, one tile", lambda r: rewrite_tile_pixel_size(r, "alpha_009", 10.0),
     [(f"{folder}/alpha_009.tif", reason) for folder in ("PLANET-RGB", "EXTRA", "labels")
      for reason in ("pixel size 10 m, expected 3 m (+/- 0.5)", "pixel size 10 m differs from the dataset's most common 3 m (63 files)")]),
    ("pixel size inconsistent across tiles", lambda r: rewrite_tile_pixel_size(r, "alpha_009", 3.2),
     [(f"{folder}/alpha_009.tif", "pixel size 3.2 m differs from the dataset's most common 3 m (63 files)")
      for folder in ("PLANET-RGB", "EXTRA", "labels")]),
    ("a tile of another size than the others", lambda r: regrow_tile(r, "alpha_009", SIZE + SIZE // 2),
     [("PLANET-RGB/alpha_009.tif", f"tile size {SIZE + SIZE // 2}x{SIZE + SIZE // 2} px differs from the dataset's most common {SIZE}x{SIZE} px (21 tiles)")]),
    ("DEFLATE instead of LZW", lambda r: rewrite(r, "labels/bravo_003.tif", compress="deflate"),
     [("labels/bravo_003.tif", "compression DEFLATE, expected LZW")]),
    ("metadata row without files", lambda r: delete_tile(r, "charlie_005"),
     [(f"{folder}/charlie_005.tif", "missing file for metadata.csv row at line 23") for folder in ("PLANET-RGB", "EXTRA", "labels")]),
    ("files without a metadata row", lambda r: edit_metadata(r, lambda rows: [x for x in rows if x["tile_id"] != "bravo_004"]),
     [(f"{folder}/bravo_004.tif", "no metadata.csv row for tile_id 'bravo_004'") for folder in ("PLANET-RGB", "EXTRA", "labels")]),
    ("stray file in one folder", lambda r: shutil.copy(r / "EXTRA/alpha_000.tif", r / "EXTRA/zulu_000.tif"),
     [("EXTRA/zulu_000.tif", "no metadata.csv row for tile_id 'zulu_000'")]),
    ("positive tile without RTS pixels", lambda r: rewrite(r, "labels/alpha_000.tif", lambda a: np.zeros_like(a)),
     [("labels/alpha_000.tif", "positive tile (metadata.csv line 2) has no RTS pixels (label 1)")]),
    ("positive tile with only ignore pixels", lambda r: rewrite(r, "labels/bravo_000.tif", lambda a: np.where(a == 1, 255, a).astype(np.uint8)),
     [("labels/bravo_000.tif", "positive tile (metadata.csv line 12) has no RTS pixels (label 1)")]),
    ("negative tile with RTS pixels", lambda r: rewrite(r, "labels/alpha_004.tif", set_pixels(1, 5)),
     [("labels/alpha_004.tif", "negative tile (metadata.csv line 6) has 5 RTS pixels (label 1)")]),
    ("TrainClass not Positive/Negative", lambda r: edit_metadata(r, set_class("charlie_003", "Maybe")),
     [("metadata.csv", "row at line 21 (tile_id 'charlie_003'): TrainClass 'Maybe' is not 'Positive' or 'Negative'")]),
    ("duplicate tile_id", lambda r: edit_metadata(r, lambda rows: rows + [rows[1]]),
     [("metadata.csv", "duplicate tile_id 'alpha_001' at lines 3 and 24")]),
    ("missing metadata column", lambda r: edit_metadata(r, lambda rows: rows, columns=["tile_id", "centroid_lat", "centroid_lon", "TrainClass", "RegionName"]),
     [("metadata.csv", "columns must be exactly tile_id, centroid_lat, centroid_lon, TrainClass, RegionName, UIDs: missing ['UIDs']")]),
    ("metadata.csv missing", lambda r: (r / "metadata.csv").unlink(),
     [("metadata.csv", "missing (expected columns")]),
    ("region in two splits", lambda r: write_splits(r, {"train": ["alpha", "bravo"], "val": ["bravo"], "test": ["charlie"]}),
     [("splits.yaml", "region 'bravo' is in several splits (train, val)")]),
    ("region in no split", lambda r: write_splits(r, {"train": ["alpha"], "val": ["bravo"], "test": []}),
     [("metadata.csv", "region 'charlie' (6 tiles, first at line 18) is in no split of splits.yaml")]),
    ("splits.yaml without test", lambda r: write_splits(r, {"train": ["alpha"], "val": ["bravo", "charlie"]}),
     [("splits.yaml", "missing key 'test'")]),
    ("version.json without dataset_version", lambda r: write_text_atomic(r / "version.json", '{"version": "2.0"}'),
     [("version.json", 'no "dataset_version" string')]),
    ("labels folder missing", lambda r: shutil.rmtree(r / "labels"),
     [("labels", "missing folder")]
     + [(f"labels/{region}_{i:03d}.tif", "missing file for metadata.csv row")
        for region, n in (("alpha", 10), ("bravo", 6), ("charlie", 6)) for i in range(n)]),
]


def assert_reported(problems: list[Problem], expected: list[tuple[str, str]]) -> None:
    """Every expected (file, reason fragment) is reported, and nothing else."""
    unmatched = list(problems)
    for path, fragment in expected:
        hit = next((p for p in unmatched if p.path == path and fragment in p.reason), None)
        assert hit is not None, f"{path}: {fragment!r} not reported; got {problems}"
        unmatched.remove(hit)
    assert not unmatched, f"unexpected problems: {unmatched}"


@pytest.mark.parametrize("case, breakage, expected", BREAKAGES, ids=[case for case, _, _ in BREAKAGES])
def test_each_broken_dataset_is_named_by_rts_check(dataset: Path, capsys, case, breakage, expected) -> None:
    breakage(dataset)
    problems = check_dataset(dataset)
    assert_reported(problems, expected)
    assert main(["check", str(dataset)]) == 1
    out = capsys.readouterr().out
    for p in problems:
        assert f"{p.path}: {p.reason}\n" in out
    assert out.rstrip().splitlines()[-1].startswith(f"FAILED: {len(problems)} problem")


def test_valid_dataset_passes(dataset: Path, capsys) -> None:
    assert check_dataset(dataset) == []
    assert main(["check", str(dataset)]) == 0
    assert capsys.readouterr().out == f"OK: {N_TILES} tiles checked\n"


def test_several_problems_are_all_reported(dataset: Path, capsys, tmp_path: Path) -> None:
    chosen = {"truncated GeoTIFF", "wrong CRS", "label value 7", "NaN in EXTRA", "metadata row without files",
              "negative tile with RTS pixels", "region in two splits", "transform mismatch"}
    expected = []
    for case, breakage, reported in BREAKAGES:
        if case in chosen:
            breakage(dataset)
            expected += reported
    assert len(expected) == 10
    problems = check_dataset(dataset)
    assert_reported(problems, expected)
    assert problems == sorted(problems)

    report = tmp_path / "report.json"
    assert main(["check", str(dataset), "--json", str(report)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:-1] == [f"{p.path}: {p.reason}" for p in problems]
    assert out[-1] == f"FAILED: 10 problems in 10 files ({N_TILES} tiles checked)"
    saved = json.loads(report.read_text())
    assert saved["ok"] is False and saved["n_tiles"] == N_TILES
    assert [Problem(**p) for p in saved["problems"]] == problems


def test_threads_give_the_same_report(dataset: Path) -> None:
    for case, breakage, _ in BREAKAGES[:8]:
        breakage(dataset)
    serial = check_dataset(dataset)
    assert len(serial) == 8
    assert check_dataset(dataset, workers=3) == serial
    assert check_dataset(dataset, progress=True) == serial


@pytest.mark.parametrize(
    "case, splits, stray, expected_warnings",
    [
        ("split region without tiles", {"train": ["alpha", "delta"], "val": ["bravo"], "test": ["charlie"]}, None,
         [Problem("splits.yaml", "region 'delta' in split 'train' has no tiles in metadata.csv")]),
        ("stray non-tif file", None, "labels/notes.txt",
         [Problem("labels/notes.txt", "unexpected entry (the folder holds only <tile_id>.tif files)")]),
    ],
)
def test_warnings_do_not_fail(dataset: Path, capsys, case, splits, stray, expected_warnings) -> None:
    if splits is not None:
        write_splits(dataset, splits)
    if stray is not None:
        write_text_atomic(dataset / stray, "hello")
    result = run_checks(dataset)
    assert result.problems == [] and result.warnings == expected_warnings
    assert main(["check", str(dataset)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{w.path}: warning: {w.reason}" for w in expected_warnings] + [f"OK: {N_TILES} tiles checked, 1 warning"]


def test_missing_dataset_folder(tmp_path: Path, capsys) -> None:
    assert check_dataset(tmp_path / "nope") == [Problem(str(tmp_path / "nope"), "dataset folder does not exist")]
    assert main(["check", str(tmp_path / "nope")]) == 1


@pytest.mark.parametrize(
    "problems, warnings, n_tiles, text",
    [
        ([], [], 5, "OK: 5 tiles checked"),
        ([Problem("b.tif", "bad"), Problem("a.tif", "worse")], [], 2, "a.tif: worse\nb.tif: bad\nFAILED: 2 problems in 2 files (2 tiles checked)"),
        ([Problem("a.tif", "x"), Problem("a.tif", "y")], [Problem("s.yaml", "odd")], None,
         "a.tif: x\na.tif: y\ns.yaml: warning: odd\nFAILED: 2 problems in 1 file (dataset checked, 1 warning)"),
    ],
)
def test_format_report(problems, warnings, n_tiles, text) -> None:
    assert format_report(problems, warnings=warnings, n_tiles=n_tiles) == text
