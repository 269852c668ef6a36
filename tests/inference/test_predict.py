"""``rts predict``: COG layout, max-merge, polygons of a known mask, run log, resume, bad inputs.

Scenes are 160 x 144 px (EPSG:3413, 3 m) with 64 px tiles and stride 32: 4 x 4 = 16 passes; the
last column of passes reaches 16 px past the east edge (reflect-padded, not output).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import torch
from rasterio.warp import transform as warp_transform

from packages import ORIGIN, Constant, RedMask, make_predictor, write_package, write_scene  # noqa: E402

from rts.inference.outputs import dissolve, overview_count  # noqa: E402
from rts.inference.predict import KILL_ENV, predict_scene, resolve_threshold, run_predict  # noqa: E402
from rts.inference.predictor import load_predictor  # noqa: E402
from rts.inference.scene import fuse_scales, grid_positions, reflect_index  # noqa: E402

H, W = 160, 144


def _scene(tmp_path: Path, *, nodata_corner: bool = True, rects=()) -> Path:
    rgb = np.full((3, H, W), 10, np.uint8)
    for r0, c0, r1, c1 in rects:
        rgb[0, r0:r1, c0:c1] = 255
    if nodata_corner:
        rgb[:, 96:, 96:] = 0  # exactly the footprint of pass r96_c96 inside the scene: skipped as nodata
    return write_scene(tmp_path / "scene.tif", rgb, nodata=0 if nodata_corner else None)


def _read(path: Path):
    with rasterio.open(path) as src:
        return src.read(1), src.profile, src


def _polygons(path: Path) -> dict:
    meta, _, geometry, data = pyogrio.raw.read(str(path))
    return {"crs": meta["crs"], "geometry": geometry, **dict(zip(meta["fields"], data))}


# ------------------------------------------------------------------------------ pure helpers


@pytest.mark.parametrize(
    "extent, tile, stride, expected",
    [
        (160, 64, 32, [0, 32, 64, 96]),  # 96 + 64 = 160: ends exactly
        (144, 64, 32, [0, 32, 64, 96]),  # last pass reaches past the edge
        (64, 64, 32, [0]),
        (40, 64, 32, [0]),  # smaller than a tile: one reflect-padded pass
        (128, 64, 64, [0, 64]),  # no overlap
    ],
)
def test_grid_positions(extent, tile, stride, expected):
    assert grid_positions(extent, tile, stride) == expected


@pytest.mark.parametrize(
    "idx, n, expected",
    [
        ([-2, -1, 0, 1, 4, 5, 6], 5, [2, 1, 0, 1, 4, 3, 2]),  # mirror about 0 and n-1, no edge repeat
        ([-9, 12], 5, [1, 4]),  # windows wider than the raster reflect repeatedly
        ([-3, 0, 3], 1, [0, 0, 0]),
    ],
)
def test_reflect_index(idx, n, expected):
    assert reflect_index(np.array(idx), n).tolist() == expected


def test_fuse_scales_takes_max_and_first_winning_scale():
    a = torch.tensor([[[[0.0, 2.0], [1.0, -1.0]]]])
    b = torch.tensor([[[[1.0, 2.0], [0.0, -3.0]]]])
    prob, idx = fuse_scales([a, b])
    assert idx.tolist() == [[[1, 0], [0, 0]]]
    torch.testing.assert_close(prob, torch.sigmoid(torch.tensor([[[1.0, 2.0], [1.0, -1.0]]])))


@pytest.mark.parametrize(
    "boxes, n_out",
    [
        ([(0, 0, 2, 2), (2, 0, 4, 2)], 1),  # share an edge (cut by a block border): dissolved
        ([(0, 0, 2, 2), (2, 2, 4, 4)], 2),  # corner contact only: 4-connected regions stay apart
        ([(0, 0, 2, 2), (5, 5, 6, 6)], 2),
        ([(0, 0, 2, 2), (2, 0, 4, 2), (4, 0, 6, 2)], 1),  # a chain across two borders
    ],
)
def test_dissolve(boxes, n_out):
    from shapely.geometry import box

    recs = [{"geometry": box(*b), "n_px": 4.0, "sum_prob": 2.0 + i, "max_prob": 0.5 + 0.1 * i, "scale": [1.0, 0.5, 0.25][i % 3],
             "tile_ids": {f"t{i}"}} for i, b in enumerate(boxes)]
    out = dissolve(recs)
    assert len(out) == n_out
    if n_out == 1:
        (m,) = out
        assert m["geometry"].geom_type == "Polygon" and m["n_px"] == 4.0 * len(boxes)
        assert m["max_prob"] == recs[-1]["max_prob"] and m["scale"] == recs[-1]["scale"]
        assert m["tile_ids"] == {f"t{i}" for i in range(len(boxes))}


@pytest.mark.parametrize("h, w, block, n", [(160, 144, 64, 2), (160, 144, 512, 1), (2048, 1000, 512, 2), (4100, 10, 512, 4)])
def test_overview_count(h, w, block, n):
    assert overview_count(h, w, block) == n


# ------------------------------------------------------------------------------ predict_scene


def test_constant_model_gives_the_constant_inside_the_scene_and_valid_cogs(tmp_path):
    scene = _scene(tmp_path)
    predictor = make_predictor(Constant(1.25), scales=(1.0, 0.5), tta="minimal")
    entry = predict_scene(predictor, scene, tmp_path / "out", threshold=0.9, num_workers=1, blocksize=64)  # a reader process
    prob, prof, _ = _read(tmp_path / "out" / "scene.prob.tif")
    inside = np.ones((H, W), bool)
    inside[96:, 96:] = False
    assert prob.shape == (H, W) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob[inside], np.float32(torch.sigmoid(torch.tensor(1.25)).item()))
    assert (prob[~inside] == -1).all()
    mask, mprof, _ = _read(tmp_path / "out" / "scene.mask.tif")
    assert mask.dtype == np.uint8 and set(np.unique(mask[inside])) == {0} and (mask[~inside] == 255).all()
    for path, dtype, nodata in [("scene.prob.tif", "float32", -1.0), ("scene.mask.tif", "uint8", 255)]:
        with rasterio.open(tmp_path / "out" / path) as src:
            assert src.dtypes[0] == dtype and src.nodata == nodata and src.crs.to_epsg() == 3413
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.profile["compress"] == "deflate" and src.block_shapes == [(64, 64)]
            assert src.overviews(1) == [2, 4]
            assert src.transform == rasterio.transform.from_origin(*ORIGIN, 3.0, 3.0)
    assert entry["tiles_total"] == 16 and entry["tiles_skipped_nodata"] == 1 and entry["tiles_processed"] == 15
    assert entry["tiles_with_detections"] == 0 and entry["rts_count"] == 0


def test_default_blocksize_is_512_with_an_overview(tmp_path):
    scene = _scene(tmp_path, nodata_corner=False)
    predict_scene(make_predictor(Constant(0.0)), scene, tmp_path / "out", threshold=0.5, num_workers=0)
    with rasterio.open(tmp_path / "out" / "scene.prob.tif") as src:
        assert src.block_shapes == [(512, 512)] and src.overviews(1) == [2]
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


RECTS = [(20, 30, 30, 50), (100, 10, 130, 16)]  # (row0, col0, row1, col1) of two RTS in the R band


def test_polygons_of_a_known_mask(tmp_path):
    scene = _scene(tmp_path, nodata_corner=False, rects=RECTS)
    entry = predict_scene(make_predictor(RedMask()), scene, tmp_path / "out", threshold=0.5, num_workers=0)
    mask, _, _ = _read(tmp_path / "out" / "scene.mask.tif")
    expected = np.zeros((H, W), np.uint8)
    for r0, c0, r1, c1 in RECTS:
        expected[r0:r1, c0:c1] = 1
    np.testing.assert_array_equal(mask, expected)
    poly = _polygons(tmp_path / "out" / "scene.gpkg")
    assert poly["crs"] == "EPSG:3413"
    assert poly["rts_id"].tolist() == [1, 2]  # north first
    assert poly["area_m2"].tolist() == [10 * 20 * 9.0, 30 * 6 * 9.0]
    assert poly["perimeter_m"].tolist() == [2 * (30 + 60.0), 2 * (90 + 18.0)]
    assert poly["mean_prob"].tolist() == [1.0, 1.0] and poly["max_prob"].tolist() == [1.0, 1.0]
    assert poly["detection_scale"].tolist() == [1.0, 1.0]
    # rows 20-29 lie only in passes starting at row 0; cols 30-49 in passes at cols 0 and 32
    assert poly["tile_ids"].tolist() == ["scene_r0_c0,scene_r0_c32", "scene_r64_c0,scene_r96_c0"]
    x0, y0 = ORIGIN
    cx, cy = [x0 + 40 * 3.0, x0 + 13 * 3.0], [y0 - 25 * 3.0, y0 - 115 * 3.0]
    lon, lat = warp_transform("EPSG:3413", "EPSG:4326", cx, cy)
    np.testing.assert_allclose(poly["centroid_lat"], lat, atol=1e-9)
    np.testing.assert_allclose(poly["centroid_lon"], lon, atol=1e-9)
    assert entry["rts_count"] == 2 and entry["total_rts_area_m2"] == 1800.0 + 1620.0
    assert entry["tiles_with_detections"] == 4  # r0_c0, r0_c32, r64_c0, r96_c0


def test_labels_give_object_recall(tmp_path):
    scene = _scene(tmp_path, nodata_corner=False, rects=RECTS)
    label = np.zeros((1, H, W), np.uint8)
    label[0, 20:30, 30:50] = 1  # found
    label[0, 60:70, 60:70] = 1  # missed
    labels = write_scene(tmp_path / "labels.tif", label)
    entry = predict_scene(make_predictor(RedMask()), scene, tmp_path / "out", threshold=0.5, labels=labels, num_workers=0)
    assert entry["objects"]["tp"] == 1 and entry["objects"]["fn"] == 1 and entry["objects"]["fp"] == 1
    assert entry["objects"]["object_recall"] == 0.5


def test_wrong_crs_scene_is_reprojected_to_3413(tmp_path):
    rgb = np.full((3, 60, 60), 10, np.uint8)
    scene = write_scene(tmp_path / "utm.tif", rgb, crs="EPSG:32606", origin=(500000.0, 7800000.0), pixel=3.0)
    entry = predict_scene(make_predictor(Constant(2.0)), scene, tmp_path / "out", threshold=0.5, num_workers=0)
    prob, _, _ = _read(tmp_path / "out" / "utm.prob.tif")
    with rasterio.open(tmp_path / "out" / "utm.prob.tif") as src:
        assert src.crs.to_epsg() == 3413 and src.res == (3.0, 3.0)
        assert src.transform.c % 3.0 == 0 and src.transform.f % 3.0 == 0  # snapped to the 3 m grid
    assert entry["reprojected"] and (prob == -1).any()  # the rotated footprint leaves nodata corners
    np.testing.assert_allclose(prob[prob != -1], torch.sigmoid(torch.tensor(2.0)).item())


def test_extra_required_when_the_model_uses_it(tmp_path):
    scene = _scene(tmp_path)
    predictor = make_predictor(Constant(0.0))
    predictor.extra_channels = ["ndvi"]
    with pytest.raises(ValueError, match="--extra"):
        predict_scene(predictor, scene, tmp_path / "out", threshold=0.5)


# ------------------------------------------------------------------------------ packages, thresholds, CLI


def test_threshold_needs_calibration_or_flag():
    p = make_predictor(Constant(0.0))
    with pytest.raises(ValueError, match="--threshold"):
        resolve_threshold(p, None, 500)
    assert resolve_threshold(p, 0.3) == (0.3, "--threshold")
    p = make_predictor(Constant(0.0), thresholds={"500": {"object": {"threshold": 0.7}}})
    assert resolve_threshold(p, None, 500) == (0.7, "calibrated 1:500 object")


def test_package_with_changed_stats_is_refused(tmp_path):
    pkg = write_package(tmp_path / "pkg")
    stats = json.loads((pkg / "normalization_stats.json").read_text())
    stats["rgb"]["mean"][0] = 1.0
    (pkg / "normalization_stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match="does not match"):
        run_predict(pkg, tmp_path / "out", scenes=[str(_scene(tmp_path))], threshold=0.5)


def test_corrupt_scene_is_logged_and_the_run_goes_on(tmp_path):
    pkg = write_package(tmp_path / "pkg", calibration={"thresholds": {"500": {"object": {"threshold": 0.5}}}})
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 50)
    good = _scene(tmp_path)
    run_log = run_predict(pkg, tmp_path / "out", scenes=[str(bad), str(good)], num_workers=0)
    assert [e["file"] for e in run_log["errors"]] == [str(bad)]
    assert (tmp_path / "out" / "scene.prob.tif").exists()
    saved = json.loads((tmp_path / "out" / "run_log.json").read_text())
    assert saved["threshold"] == 0.5 and saved["threshold_source"] == "calibrated 1:500 object"
    for key in ("model", "normalization_stats_sha256", "scales", "tta", "tiles_processed", "tiles_with_detections",
                "total_rts_area_m2", "wall_time_s", "device", "tiles_skipped_nodata", "errors"):
        assert key in saved, key
    assert saved["model"]["git_commit"] == "abc123" and len(saved["model"]["checkpoint_sha256"]) == 64
    assert saved["tiles_processed"] == 15 and saved["tiles_skipped_nodata"] == 1


def _cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "rts", "predict", *args], capture_output=True, text=True, env=env, timeout=120)


def test_kill_and_resume_is_byte_identical(tmp_path):
    pkg = write_package(tmp_path / "pkg")
    scene = _scene(tmp_path, rects=RECTS)
    common = [str(scene), "--model", str(pkg), "--threshold", "0.5", "--workers", "0", "--batch-size", "2", "--device", "cpu"]
    full = _cli([*common, "--out", str(tmp_path / "a")])
    assert full.returncode == 0, full.stderr
    killed = _cli([*common, "--out", str(tmp_path / "b")], {KILL_ENV: "5"})
    assert killed.returncode == -9, killed.stderr  # SIGKILL after 3 batches (6 passes), 2 batches in the manifest
    manifest = (tmp_path / "b" / ".work" / "scene" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 4 and not (tmp_path / "b" / "scene.prob.tif").exists()
    # another threshold is refused for the unfinished region, like any other setting (issue 16 defect 4)
    other = _cli([*common[:4], "0.7", *common[5:], "--out", str(tmp_path / "b")])
    assert other.returncode == 5 and [l for l in other.stderr.splitlines() if " INFO " not in l] == [other.stderr.splitlines()[-1]], other.stderr
    assert other.stderr.splitlines()[-1].startswith("error: ") and "Traceback" not in other.stderr, other.stderr
    assert "unfinished outputs begun at threshold 0.5, not 0.7; resume with --threshold 0.5" in other.stderr, other.stderr
    assert (tmp_path / "b" / ".work" / "scene" / "manifest.jsonl").read_text().splitlines() == manifest
    resumed = _cli([*common, "--out", str(tmp_path / "b")])
    assert resumed.returncode == 0, resumed.stderr
    log_b = json.loads((tmp_path / "b" / "run_log.json").read_text())
    assert log_b["regions"][0]["tiles_resumed"] == 4 and log_b["regions"][0]["tiles_run"] == 12
    for name in ("scene.prob.tif", "scene.mask.tif", "scene.gpkg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not (tmp_path / "b" / ".work" / "scene" / "prob.f32").exists()  # accumulators removed after success
    again = run_predict(pkg, tmp_path / "b", scenes=[str(scene)], threshold=0.5, num_workers=0)  # finished: skipped
    assert again["regions"][0]["tiles_run"] == 0 and load_predictor(pkg).tile_size == 64


def test_background_finalize_overlaps_the_next_scene_with_identical_outputs(tmp_path, monkeypatch):
    """``--finalize-workers 1``: scene a's outputs are written on a background thread while scene b's
    passes run (a's writer waits for b's passes to start; written in line it would time out), with
    the susceptibility filter on its own file handle; every output and log entry equals the
    one-at-a-time run (``--finalize-workers 0``)."""
    import threading

    from rasterio.transform import from_origin

    from rts.inference import predict as P
    from rts.io import write_geotiff

    pkg = write_package(tmp_path / "pkg")
    scenes = [str(write_scene(tmp_path / f"{name}.tif", np.full((3, H, W), 10, np.uint8) + np.uint8(k * 100)))
              for k, name in enumerate("ab")]
    likelihood = np.ones((H, W), np.float32)
    likelihood[:, 64:] = 0.0
    layer = tmp_path / "susc.tif"
    write_geotiff(layer, likelihood, from_origin(*ORIGIN, 3.0, 3.0), crs="EPSG:3413")
    common = dict(scenes=scenes, threshold=0.0, num_workers=0, blocksize=64, susceptibility=str(layer))
    inline = run_predict(pkg, tmp_path / "inline", finalize_workers=0, **common)

    b_started, seen = threading.Event(), []
    real_passes, real_write = P._run_passes, P.write_outputs

    def passes(predictor, region, *args, **kwargs):
        if region.name == "b":
            b_started.set()
        return real_passes(predictor, region, *args, **kwargs)

    def write(region, *args, **kwargs):
        if region.name == "a":
            seen.append((threading.current_thread().name, b_started.wait(timeout=60)))
        return real_write(region, *args, **kwargs)

    monkeypatch.setattr(P, "_run_passes", passes)
    monkeypatch.setattr(P, "write_outputs", write)
    overlapped = run_predict(pkg, tmp_path / "overlap", finalize_workers=1, **common)
    assert seen == [("rts-finalize_0", True)]

    assert overlapped["errors"] == inline["errors"] == []
    assert [r["name"] for r in overlapped["regions"]] == ["a", "b"]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("timing", "outputs")}  # noqa: E731
    assert [strip(r) for r in overlapped["regions"]] == [strip(r) for r in inline["regions"]]
    assert overlapped["regions"][0]["susceptibility"]["tiles_skipped"] > 0
    for name in ("a.prob.tif", "a.mask.tif", "a.gpkg", "b.prob.tif", "b.mask.tif", "b.gpkg"):
        assert (tmp_path / "overlap" / name).read_bytes() == (tmp_path / "inline" / name).read_bytes(), name
    assert not list((tmp_path / "overlap" / ".work").glob("*/prob.f32"))  # accumulators removed by the writer
    assert overlapped["options"]["finalize_workers"] == 1


def test_failed_background_write_is_logged_and_the_run_goes_on(tmp_path, monkeypatch):
    from rts.inference import predict as P

    pkg = write_package(tmp_path / "pkg")
    scenes = [str(write_scene(tmp_path / f"{name}.tif", np.full((3, H, W), 10, np.uint8))) for name in "ab"]
    real_write = P.write_outputs

    def write(region, *args, **kwargs):
        if region.name == "a":
            raise OSError(28, "No space left on device", str(tmp_path / "out" / "a.prob.tif"))
        return real_write(region, *args, **kwargs)

    monkeypatch.setattr(P, "write_outputs", write)
    run_log = run_predict(pkg, tmp_path / "out", scenes=scenes, threshold=0.5, num_workers=0, finalize_workers=1)
    assert [e["file"] for e in run_log["errors"]] == [scenes[0]] and "No space left" in run_log["errors"][0]["error"]
    assert [r["name"] for r in run_log["regions"]] == ["b"] and (tmp_path / "out" / "b.prob.tif").exists()
    assert (tmp_path / "out" / ".work" / "a" / "prob.f32").exists()  # a's passes are kept: a re-run only writes


def test_inputs_with_the_same_name_are_refused_before_any_work(tmp_path):
    """Outputs and accumulators are named after the file stem: two inputs with one stem would
    overwrite each other (and, with the background writer, share accumulators)."""
    rgb = np.full((3, H, W), 10, np.uint8)
    first, second = write_scene(tmp_path / "x" / "scene.tif", rgb), write_scene(tmp_path / "y" / "scene.tif", rgb)
    with pytest.raises(ValueError, match=r"share the name 'scene'"):
        run_predict(tmp_path / "no-package-needed", tmp_path / "out", scenes=[str(first), str(second)], threshold=0.5)
    assert not (tmp_path / "out").exists()


def test_pass_readers_start_clean_while_another_thread_holds_a_lock(tmp_path, monkeypatch):
    """The next scene's readers start while the previous scene's writer thread is inside GDAL and
    holds its locks. A forked reader inherits a held lock that no thread of it will ever release;
    the readers must come from a clean forkserver process instead."""
    import forking
    import rts.inference.predict as P

    contexts = []
    real = P.reader_context

    def recording():
        ctx = real()
        contexts.append(ctx.get_start_method())
        return ctx

    monkeypatch.setattr(P, "reader_context", recording)
    predict_scene(make_predictor(Constant(1.25)), _scene(tmp_path), tmp_path / "out", threshold=0.9, num_workers=1, blocksize=64)
    assert contexts == ["forkserver"], "the pass readers are started by the forkserver context"

    held, release = threading.Event(), threading.Event()

    def writer():  # a thread inside a library call, holding its lock
        with forking.LOCK:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(5)
    try:
        outcome = {}
        for method, ctx in (("forkserver", real()), ("fork", multiprocessing.get_context("fork"))):
            queue = ctx.Queue()
            child = ctx.Process(target=forking.try_lock, args=(queue,))
            child.start()
            outcome[method] = queue.get(timeout=60)
            child.join(30)
    finally:
        release.set()
        thread.join()
    assert outcome == {"forkserver": True, "fork": False}, outcome


def test_a_full_disk_at_the_finished_marker_keeps_the_accumulators_for_an_identical_rerun(tmp_path, monkeypatch):
    """The accumulators were deleted before ``done.json`` was durable: after a failed marker the
    re-run found every pass done, made empty accumulators and overwrote good outputs with all-nodata
    ones, exiting 0. Now they stay until the marker is written, and the re-run writes the outputs of
    an uninterrupted run."""
    import errno

    from rts.inference import predict as P

    scene, predictor = _scene(tmp_path, rects=RECTS), make_predictor(RedMask())
    predict_scene(predictor, scene, tmp_path / "a", threshold=0.5, num_workers=0, blocksize=64)
    real = P.write_json_atomic

    def full_disk(path, obj):
        if Path(path).name == P.DONE_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj)

    monkeypatch.setattr(P, "write_json_atomic", full_disk)
    with pytest.raises(OSError, match="No space left"):
        predict_scene(predictor, scene, tmp_path / "b", threshold=0.5, num_workers=0, blocksize=64)
    work = tmp_path / "b" / ".work" / "scene"
    assert (work / "prob.f32").exists() and (work / "scale.u8").exists() and not (work / P.DONE_FILE).exists()
    monkeypatch.setattr(P, "write_json_atomic", real)
    entry = predict_scene(predictor, scene, tmp_path / "b", threshold=0.5, num_workers=0, blocksize=64)
    assert entry["complete"] and entry["rts_count"] > 0
    for name in ("scene.prob.tif", "scene.mask.tif", "scene.gpkg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_finished_passes_without_their_accumulators_are_an_error_not_empty_outputs(tmp_path):
    from rts.errors import OutputError
    from rts.inference import predict as P

    scene, predictor = _scene(tmp_path, rects=RECTS), make_predictor(RedMask())
    predict_scene(predictor, scene, tmp_path / "out", threshold=0.5, num_workers=0, blocksize=64)
    work = tmp_path / "out" / ".work" / "scene"
    (work / P.DONE_FILE).unlink()  # the marker lost, the accumulators already gone (the old order)
    good = (tmp_path / "out" / "scene.prob.tif").read_bytes()
    with pytest.raises(OutputError, match="finished passes but no prob.f32"):
        predict_scene(predictor, scene, tmp_path / "out", threshold=0.5, num_workers=0, blocksize=64)
    assert (tmp_path / "out" / "scene.prob.tif").read_bytes() == good, "the good outputs are untouched"


@pytest.mark.parametrize("kind", ["uint16", "float01", "bgrn"])
def test_a_scene_that_is_not_3_band_uint8_rgb_is_refused_before_the_model_loads(tmp_path, kind):
    """A uint16 scene, a 0-1 float scene and a 4-band BGRN scene used to run with exit 0 and full,
    wrong outputs. They are refused with the file, what it holds and how to make an RGB VRT."""
    rgb = np.full((3, H, W), 10, np.uint8)
    data = {"uint16": rgb.astype(np.uint16) * 40, "float01": rgb.astype(np.float32) / 255,
            "bgrn": np.concatenate([rgb[::-1], rgb[:1]])}[kind]
    scene = write_scene(tmp_path / f"{kind}.tif", data)
    proc = _cli([str(scene), "--model", str(tmp_path / "no-such-package"), "--threshold", "0.5", "--workers", "0",
                 "--device", "cpu", "--out", str(tmp_path / "out")])
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{kind}.tif" in lines[0] and "3-band uint8 RGB" in lines[0] and "gdal_translate" in lines[0], lines
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_second_predict_into_a_region_being_written_is_refused(tmp_path):
    """Two runs into one folder interleaved their outputs (a mask at 0.7 beside polygons and a run
    log at 0.5, both exiting 0). A region's work folder is locked for the whole run."""
    from rts.errors import OutputError
    from rts.inference import predict as P

    scene, predictor = _scene(tmp_path, rects=RECTS), make_predictor(RedMask())
    lock = P.RegionLock(tmp_path / "out" / P.WORK_DIR / "scene")  # another run, mid-way
    try:
        with pytest.raises(OutputError, match="another rts predict is writing"):
            predict_scene(predictor, scene, tmp_path / "out", threshold=0.7, num_workers=0, blocksize=64)
        assert not (tmp_path / "out" / "scene.mask.tif").exists()
    finally:
        lock.release()
    entry = predict_scene(predictor, scene, tmp_path / "out", threshold=0.7, num_workers=0, blocksize=64)
    assert entry["complete"]
    again = predict_scene(predictor, scene, tmp_path / "out", threshold=0.7, num_workers=0, blocksize=64)
    assert again["tiles_run"] == 0, "the lock is released when a run ends"


def test_predict_logs_its_passes_with_rate_and_eta_off_a_terminal(tmp_path):
    pkg = write_package(tmp_path / "pkg")
    scene = _scene(tmp_path)
    proc = _cli([str(scene), "--model", str(pkg), "--threshold", "0.5", "--workers", "0", "--batch-size", "4", "--device", "cpu",
                 "--out", str(tmp_path / "out")], {"RTS_PROGRESS_INTERVAL": "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "INFO rts.progress: passes scene: " in line]
    assert len(lines) == 5, proc.stderr  # one per batch of 4 passes, then the final line
    assert "passes scene: 4/16 passes (25%), " in lines[0] and ", ETA " in lines[0]
    assert "pass/s" in lines[0] or "s/pass" in lines[0]
    assert "passes scene: 16/16 passes in " in lines[-1]


def test_a_finished_region_with_kept_accumulators_is_rethresholded_whole(tmp_path):
    """``--keep-work`` keeps a finished region's accumulators: a run at another threshold writes all
    its outputs at the new one from them (no pass runs again), and records that threshold."""
    rgb = np.full((3, 160, 144), 10, np.uint8)
    rgb[0, 20:30, 30:50] = 255
    scene = write_scene(tmp_path / "scene.tif", rgb)
    predictor = make_predictor(RedMask())
    first = predict_scene(predictor, scene, tmp_path / "out", threshold=0.5, num_workers=0, blocksize=64, keep_work=True)
    again = predict_scene(predictor, scene, tmp_path / "out", threshold=0.99, num_workers=0, blocksize=64, keep_work=True)
    assert first["complete"] and again["complete"] and again["tiles_run"] == 0
    settings = json.loads((tmp_path / "out" / ".work" / "scene" / "settings.json").read_text())
    assert settings["threshold"] == 0.99
