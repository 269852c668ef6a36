"""`rts score` through the real CLI on GeoTIFFs written here, including every input error."""

import json

import numpy as np
import pytest
from affine import Affine

from rts.cli import main
from rts.io import write_geotiff
from rts.metrics.score import ScoreError, score_folders

T = Affine(3.0, 0.0, -2_000_000.0, 0.0, -3.0, 1_000_000.0)


def _write_pair(tmp_path, name, prob, label, transform=T, crs="EPSG:3413"):
    write_geotiff(tmp_path / "pred" / name, prob.astype(np.float32), transform, crs=crs)
    write_geotiff(tmp_path / "lab" / name, label.astype(np.uint8), T)


def _scene(tmp_path):
    prob = np.zeros((32, 32), np.float32)
    label = np.zeros((32, 32), np.uint8)
    label[4:12, 4:12] = 1
    prob[4:12, 4:12] = 0.9
    _write_pair(tmp_path, "pos.tif", prob, label)
    neg = np.zeros((32, 32), np.float32)
    neg[20:24, 20:24] = 0.8  # 16 pixels, one object
    _write_pair(tmp_path, "neg.tif", neg, np.zeros((32, 32), np.uint8))


def test_cli_scores_and_writes_json(tmp_path, capsys):
    _scene(tmp_path)
    out = tmp_path / "m.json"
    rc = main(["score", str(tmp_path / "pred"), str(tmp_path / "lab"), "--ratios", "200", "--out", str(out), "--min-object-px", "4"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert (r["n_pos_tiles"], r["n_neg_tiles"]) == (1, 1)  # positive = any label 1 pixel
    # 1:200 with 1 negative tile: w = 200; 64 TP pixels, 16 FP pixels x 200
    assert r["ratio_200"]["precision"] == pytest.approx(64 / (64 + 3200))
    assert r["ratio_200"]["obj_iou0.3_precision"] == pytest.approx(1 / 201)
    assert r["unweighted"]["obj_iou0.3_recall"] == 1.0
    assert "1:200" in capsys.readouterr().out


def _expect(tmp_path, match):
    with pytest.raises(ScoreError, match=match):
        score_folders(tmp_path / "pred", tmp_path / "lab")


def test_missing_pair_is_named(tmp_path):
    _scene(tmp_path)
    (tmp_path / "lab" / "neg.tif").unlink()
    _expect(tmp_path, r"neg\.tif: no label")


def test_grid_mismatch_is_named(tmp_path):
    _write_pair(tmp_path, "a.tif", np.zeros((16, 16)), np.zeros((16, 16)), transform=Affine(3.0, 0.0, 0.0, 0.0, -3.0, 0.0))
    _expect(tmp_path, r"a\.tif.*grids differ")


def test_crs_mismatch_is_named(tmp_path):
    _write_pair(tmp_path, "a.tif", np.zeros((16, 16)), np.zeros((16, 16)), crs="EPSG:32633")
    _expect(tmp_path, r"a\.tif.*grids differ")


@pytest.mark.parametrize(("value", "match"), [(np.nan, "NaN"), (1.5, r"outside \[0, 1\]"), (-0.1, r"outside \[0, 1\]")])
def test_bad_probabilities_are_named(tmp_path, value, match):
    prob = np.zeros((16, 16))
    prob[3, 3] = value
    _write_pair(tmp_path, "bad.tif", prob, np.zeros((16, 16)))
    _expect(tmp_path, rf"bad\.tif.*{match}|{match}.*bad\.tif")


def test_cli_error_exit_code(tmp_path):
    _scene(tmp_path)
    (tmp_path / "pred" / "pos.tif").unlink()
    assert main(["score", str(tmp_path / "pred"), str(tmp_path / "lab")]) == 3, "unscoreable inputs are a DataError (exit 3)"


def test_corrupt_file_is_named(tmp_path):
    _scene(tmp_path)
    (tmp_path / "pred" / "pos.tif").write_bytes(b"not a tiff")
    _expect(tmp_path, r"pos\.tif: cannot read GeoTIFF")


def test_predict_nodata_counts_as_not_predicted(tmp_path):
    """rts score refused the -1 nodata that rts predict writes where no pass ran; those pixels now
    count like label 255, in neither class."""
    prob = np.zeros((32, 32), np.float32)
    label = np.zeros((32, 32), np.uint8)
    label[4:12, 4:12] = 1
    prob[4:12, 4:12] = 0.9
    prob[20:, :] = -1.0  # no pass ran here
    label[24:28, 0:8] = 1  # an RTS nobody predicted on: not a miss
    write_geotiff(tmp_path / "pred" / "a.tif", prob, T, nodata=-1.0)
    write_geotiff(tmp_path / "lab" / "a.tif", label, T)
    r = score_folders(tmp_path / "pred", tmp_path / "lab", min_object_px=4)
    assert r["unweighted"]["recall"] == 1.0 and r["unweighted"]["precision"] == 1.0


def test_a_raster_without_crs_is_refused(tmp_path):
    write_geotiff(tmp_path / "pred" / "a.tif", np.zeros((16, 16), np.float32), T, crs=None)
    write_geotiff(tmp_path / "lab" / "a.tif", np.zeros((16, 16), np.uint8), T)
    _expect(tmp_path, r"a\.tif: no CRS")


def test_cli_min_object_px_zero_is_one_line_exit_2(tmp_path, capsys):
    _scene(tmp_path)
    assert main(["score", str(tmp_path / "pred"), str(tmp_path / "lab"), "--min-object-px", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--min-object-px: must be >= 1" in err[0], err
