"""The ``rts`` command line through its real entry point (``python -m rts`` in a subprocess): each
wrong input is one line naming the file or option and the fix, with its exit code (``rts.errors``),
and ``rts predict`` refuses it before loading the model; ``--bands`` reads a 4-band scene exactly as
the 3-band RGB file of those bands; the conventions every subcommand shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from packages import ORIGIN, write_package
from workdir import REPO

from rts.cli import COMMANDS
from rts.config import EvaluateConfig
from rts.inference.predictor import CALIBRATION_FILE

H, W = 96, 112  # a few 64 px passes, and edges that are reflected


def rts(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "rts", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The only line on stderr: the project's message, no traceback, no usage."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr[-3000:]}"
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def write_raster(path: Path, data: np.ndarray, *, nodata: float | None = None, photometric: str | None = "MINISBLACK") -> Path:
    """A (C, H, W) GeoTIFF in EPSG:3413 at 3 m. MINISBLACK: a 4th uint8 band is a band, not alpha."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype.name,
                   crs="EPSG:3413", transform=from_origin(*ORIGIN, 3.0, 3.0), tiled=True, blockxsize=32, blockysize=32,
                   compress="lzw")
    if nodata is not None:
        profile["nodata"] = nodata
    if photometric is not None:
        profile["photometric"] = photometric
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def rgb_scene() -> np.ndarray:
    """Varied RGB with a nodata (0) corner, so the model output and the skipped passes both matter."""
    rgb = np.random.default_rng(0).integers(1, 256, (3, H, W)).astype(np.uint8)
    rgb[:, 32:, 64:] = 0  # the whole footprint of pass r32_c64 inside the scene: skipped as nodata
    return rgb


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return write_package(tmp_path_factory.mktemp("pkg") / "pkg")


@pytest.fixture
def broken_package(tmp_path) -> Path:
    """A folder whose model.pt cannot be loaded: an error about anything else proves that the check
    ran before the model load."""
    pkg = tmp_path / "broken"
    pkg.mkdir()
    (pkg / "model.pt").write_bytes(b"not a checkpoint")
    return pkg


def predict(scene: Path, model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return rts("predict", scene, "--model", model, "-o", out, "--device", "cpu", "--workers", "0", *extra)


# ------------------------------------------------------------------------------ predict: the scene


@pytest.mark.parametrize("kind, bands, code, expect", [
    # the case: a 4-band float raster given as the RGB scene ran and gave 471 "RTS"
    ("float4", None, 3, ["4 band(s) of float32", "3-band uint8 RGB", "gdal_translate"]),
    # a PlanetScope 4-band uint16 analytic scene was read as RGB without a word
    ("uint16_bgrn", None, 3, ["4 band(s) of uint16", "3-band uint8 RGB", "gdal_translate -of VRT -b 3 -b 2 -b 1 -ot Byte"]),
    # with the band mapping it is still uint16: the model reads raw uint8 values, no scaling is defined
    ("uint16_bgrn", "3,2,1", 3, ["bands 3,2,1 are uint16", "uint8", "data-format.md", "gdal_translate"]),
    # a 4-band uint8 BGRN scene is readable, with the mapping
    ("uint8_bgrn", None, 3, ["4 band(s) of uint8", "--bands 3,2,1"]),
    ("uint8_bgrn", "5,2,1", 2, ["--bands 5,2,1", "has 4 band(s), no band 5", "1..4"]),
    ("uint8_bgrn", "3,2", 2, ["--bands '3,2'", "e.g. --bands 3,2,1"]),
    ("uint8_bgrn", "r,g,b", 2, ["--bands 'r,g,b'"]),
])
def test_a_scene_predict_cannot_read_as_rgb_is_one_line_before_the_model_loads(tmp_path, broken_package, kind, bands, code, expect):
    rgb = rgb_scene()
    bgrn = np.concatenate([rgb[::-1], rgb[:1]])
    data = {"float4": bgrn.astype(np.float32) / 255, "uint16_bgrn": bgrn.astype(np.uint16) * 40, "uint8_bgrn": bgrn}[kind]
    scene = write_raster(tmp_path / f"{kind}.tif", data)
    proc = predict(scene, broken_package, tmp_path / "out", "--threshold", "0.5", *(["--bands", bands] if bands else []))
    assert proc.returncode == code, proc.stderr[-3000:]
    line = one_line(proc)
    assert all(e in line for e in expect), line
    if code == 3:
        assert str(scene) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["scene", "tiles"])
def test_bands_read_a_4_band_bgrn_scene_as_the_3_band_rgb_file_of_those_bands(tmp_path, package, mode):
    """--bands 3,2,1 on a BGRN file gives the outputs of the RGB file holding bands 3, 2, 1: the
    mapping reaches the reader processes (--workers 2), the nodata mask and the grid, for a scene
    and for a tile list over a mosaic."""
    rgb = rgb_scene()
    bgrn = np.concatenate([rgb[::-1], np.full((1, H, W), 77, np.uint8)])  # NIR has no nodata where RGB has
    for name in ("rgb", "bgrn"):
        (tmp_path / name).mkdir()
    rgb_file = write_raster(tmp_path / "rgb" / "scene.tif", rgb, nodata=0, photometric=None)
    bgrn_file = write_raster(tmp_path / "bgrn" / "scene.tif", bgrn, nodata=0)
    common = ["--threshold", "0.5", "--device", "cpu", "--workers", "2", "--batch-size", "2", "--blocksize", "64"]
    if mode == "tiles":
        x0, y0 = ORIGIN
        tile_list = tmp_path / "list.csv"
        tile_list.write_text(f"tile_id,minx,miny,maxx,maxy\na,{x0 + 30},{y0 - 200},{x0 + 250},{y0 - 20}\n")
        inputs = {name: ["--tiles", tile_list, "--mosaic", path] for name, path in (("rgb", rgb_file), ("bgrn", bgrn_file))}
    else:
        inputs = {"rgb": [rgb_file], "bgrn": [bgrn_file]}
    a = rts("predict", *inputs["rgb"], "--model", package, "-o", tmp_path / "out_rgb", *common)
    b = rts("predict", *inputs["bgrn"], "--bands", "3,2,1", "--model", package, "-o", tmp_path / "out_bgrn", *common)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    stem = "list" if mode == "tiles" else "scene"
    for suffix in ("prob.tif", "mask.tif"):
        with rasterio.open(tmp_path / "out_rgb" / f"{stem}.{suffix}") as x, rasterio.open(tmp_path / "out_bgrn" / f"{stem}.{suffix}") as y:
            assert x.profile == y.profile
            np.testing.assert_array_equal(x.read(1), y.read(1))
    with rasterio.open(tmp_path / "out_rgb" / f"{stem}.prob.tif") as x:
        prob = x.read(1)
    assert (prob == -1).any() and (prob > 0).any(), "the comparison covers nodata and predicted pixels"
    logs = [json.loads((tmp_path / d / "run_log.json").read_text()) for d in ("out_rgb", "out_bgrn")]
    keys = ("tiles_processed", "tiles_skipped_nodata", "rts_count", "total_rts_area_m2")
    assert [logs[0][k] for k in keys] == [logs[1][k] for k in keys]
    assert logs[0]["tiles_skipped_nodata"] >= (1 if mode == "scene" else 0)
    assert logs[0]["rgb_bands"] == [1, 2, 3] and logs[1]["rgb_bands"] == [3, 2, 1]


# ------------------------------------------------------------------------------ predict: the threshold


def calibration(thresholds: dict) -> dict:
    return {"temperature": 1.0, "target_precision": 0.8, "thresholds": thresholds, "tta": "none", "scales": [1.0]}


UNREACHED = {"threshold": None, "reached": False, "best_precision": 0.4213, "best_precision_threshold": 0.93,
             "target_precision": 0.8, "note": "target precision 0.8 not reached on val-realistic"}


@pytest.mark.parametrize("case, code, expect", [
    # the case: a traceback after the model load, and advice naming a file that does not exist
    ("unreached", 2, ["threshold_calibration.json", "calibrate.target_precision=0.8", "best precision 0.421",
                      "--threshold P", "dvc exp run -S calibrate.target_precision=0.42"]),
    ("uncalibrated", 2, ["threshold_calibration.json: not found", "--threshold P", "dvc repro calibrate"]),
    ("other_ratio", 2, ["no object threshold for --ratio 300", "calibrated ratios: 200, 500, 1000", "--threshold P"]),
    ("out_of_range", 2, ["--threshold 1.5", "[0, 1]"]),
])
def test_predict_without_a_usable_threshold_is_one_line_before_the_model_loads(tmp_path, broken_package, case, code, expect):
    scene = write_raster(tmp_path / "scene.tif", rgb_scene(), photometric=None)
    if case != "uncalibrated":
        thresholds = {r: {"object": dict(UNREACHED), "pixel": {"threshold": 0.5, "reached": True}} for r in ("200", "500", "1000")}
        if case == "other_ratio":
            thresholds["500"]["object"] = {"threshold": 0.6, "reached": True}
        (broken_package / CALIBRATION_FILE).write_text(json.dumps(calibration(thresholds)))
    extra = {"other_ratio": ["--ratio", "300"], "out_of_range": ["--threshold", "1.5"]}.get(case, [])
    proc = predict(scene, broken_package, tmp_path / "out", *extra)
    assert proc.returncode == code, proc.stderr[-3000:]
    line = one_line(proc)
    assert all(e in line for e in expect), line
    for named in ("models/rts-model/",):  # advice must not point at a folder as if it were there
        assert f"use the calibrated package ({named})" not in line


def test_the_advised_lower_target_is_a_param_that_exists():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "target_precision" in params["calibrate"]


# ------------------------------------------------------------------------------ score, min-object-px


def test_score_min_object_px_0_is_one_line(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "labels").mkdir()
    proc = rts("score", tmp_path / "pred", tmp_path / "labels", "--min-object-px", "0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--min-object-px" in one_line(proc) and ">= 1" in one_line(proc)


def test_predict_min_object_px_0_is_one_line(tmp_path, broken_package):
    scene = write_raster(tmp_path / "scene.tif", rgb_scene(), photometric=None)
    proc = predict(scene, broken_package, tmp_path / "out", "--threshold", "0.5", "--min-object-px", "0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--min-object-px 0" in one_line(proc) and ">= 1" in one_line(proc)


def test_min_object_px_has_one_default_everywhere():
    """score and predict (and evaluate's params) agree on the smallest object."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert EvaluateConfig().min_object_px == params["evaluate"]["min_object_px"]
    for command in ("score", "predict"):
        out = rts(command, "--help").stdout
        assert "--min-object-px" in out, command
        text = " ".join(out.split())
        assert f"(default: {EvaluateConfig().min_object_px})" in text.rsplit("--min-object-px MIN_OBJECT_PX", 1)[1][:200], command


# ------------------------------------------------------------------------------ conventions


def test_version():
    from rts import __version__

    proc = rts("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"rts {__version__}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_defaults_and_the_one_output_option(command):
    proc = rts(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "-o " in text and "--out " in text, f"rts {command}: no -o/--out\n{proc.stdout}"
    assert "--json" not in text, "older spellings are accepted, not listed"
    if command in ("predict", "score", "merge", "tiles", "estimate", "check", "profile", "synth"):
        assert "(default: " in text, proc.stdout


def test_older_output_spellings_still_work(tmp_path):
    """Scripts written for `rts synth OUT`, `rts check --json`, `rts merge OUT CHUNK...` keep working
    beside the -o convention."""
    old = rts("synth", tmp_path / "a", "--preset", "tiny")
    new = rts("synth", "-o", tmp_path / "b", "--preset", "tiny")
    assert old.returncode == 0 and new.returncode == 0, (old.stderr[-2000:], new.stderr[-2000:])
    assert (tmp_path / "a" / "version.json").read_bytes() == (tmp_path / "b" / "version.json").read_bytes()
    for flag, name in (("--json", "old.json"), ("-o", "new.json")):
        proc = rts("check", tmp_path / "a", flag, tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "old.json").read_text()) == json.loads((tmp_path / "new.json").read_text())
    both = rts("synth", "-o", tmp_path / "c", tmp_path / "d", "--preset", "tiny")
    assert both.returncode == 2 and "two output folders" in one_line(both)
    none = rts("synth", "--preset", "tiny")
    assert none.returncode == 2 and "-o OUT" in one_line(none)


def test_bands_on_a_scene_whose_4th_band_gdal_takes_as_alpha_warns_with_the_fix(tmp_path, package):
    """rasterio/GDAL mark band 4 of a 4-band uint8 GeoTIFF as alpha unless told otherwise: its zeros
    would be nodata. With --bands that is said, with the command that unmarks it."""
    rgb = rgb_scene()
    scene = write_raster(tmp_path / "bgrn.tif", np.concatenate([rgb[::-1], rgb[:1]]), photometric=None)
    with rasterio.open(scene) as src:
        assert src.colorinterp[3].name == "alpha"
    proc = predict(scene, package, tmp_path / "out", "--threshold", "0.5", "--bands", "3,2,1", "--blocksize", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"gdal_edit.py -colorinterp_4 undefined {scene}" in proc.stderr


def test_merge_without_an_output_folder_is_one_line(tmp_path):
    proc = rts("merge", tmp_path / "chunk0")
    assert proc.returncode == 2 and "-o OUT" in one_line(proc)
