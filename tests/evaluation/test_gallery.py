"""The error gallery shows the cases the metrics count: its false positives per tile are the
accumulator's, its mosaics list the highest-cost ones, missed RTS by size class, fragmented objects;
and the evaluate stage's library writes the PNGs and the listing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rts.evaluation.gallery import Gallery, gallery_ratio
from rts.metrics import EvalAccumulator

IOU = 0.3
MIN_PX = 8


def tiles(seed: int = 0, n: int = 14, size: int = 48):
    """(tile id, positive, prob, label) of hand-placed objects: true detections, false alarms of
    varying score on positive and negative tiles, a missed RTS, and an RTS split in two."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        positive = i % 2 == 0
        prob = rng.uniform(0, 0.2, (size, size))
        label = np.zeros((size, size), np.uint8)
        if positive:
            label[5:17, 5:17] = 1  # RTS
            if i % 4 == 0:
                prob[5:17, 5:17] = 0.9  # detected
            elif i == 2:
                prob[5:17, 5:10] = 0.8  # two fragments touch it; the larger is matched
                prob[5:17, 12:17] = 0.7
            # else: missed
        if i % 3 == 0:  # a false alarm, score grows with i
            prob[30:40, 30:40] = 0.55 + 0.03 * i
        out.append((f"t{i:02d}", positive, prob, label))
    return out


def test_false_positives_per_tile_are_the_accumulators_and_the_listed_ones_cost_most():
    data = tiles()
    n_pos = sum(p for _, p, _, _ in data)
    w = 500 * n_pos / (len(data) - n_pos)
    g = Gallery(threshold=0.5, iou=IOU, min_object_px=MIN_PX, n_cases=3, negative_weight=w, ratio=500)
    fp_acc = {}
    iou_idx = 1
    for tid, positive, prob, label in data:
        acc = EvalAccumulator(n_bins=100, operating_threshold=0.5, iou_thresholds=(0.1, IOU, 0.5), min_object_px=MIN_PX)
        acc.update(prob, label, positive_tile=positive)
        fp_acc[tid] = int(acc.obj_op[:, iou_idx, 1].sum())
        g.add(tid, "alpha", positive, prob, label, lambda: np.full((3, 48, 48), 100, np.uint8))
    listing = g.listing()
    assert listing["false_positives_per_tile"] == {t: n for t, n in fp_acc.items() if n}
    assert listing["totals"]["false_positives"] == sum(fp_acc.values())
    # the three highest costs: false alarms on negative tiles (weight w) beat those on positive tiles
    all_fp = [(0.55 + 0.03 * int(t[1:])) * (1 if int(t[1:]) % 2 == 0 else w) for t in fp_acc if fp_acc[t]]
    listed = [c["cost"] for c in listing["false_positives"]]
    assert listed == pytest.approx(sorted(all_fp, reverse=True)[:3], rel=1e-3)
    assert all(fp_acc[c["tile_id"]] > 0 for c in listing["false_positives"])
    # the missed RTS (tiles 6 and 10: positive, not i % 4 == 0, not 2) and the fragmented one (tile 2)
    assert sorted(c["tile_id"] for c in listing["missed"]["small"]) == ["t06", "t10"]
    assert [c["tile_id"] for c in listing["fragmented"]] == ["t02"] and listing["fragmented"][0]["n_fragments"] == 2


def test_mosaics_are_written_even_without_cases(tmp_path):
    g = Gallery(threshold=0.5, iou=IOU, min_object_px=MIN_PX, n_cases=4)
    for tid, positive, prob, label in tiles(n=6):
        g.add(tid, "alpha", positive, prob, label, lambda: np.full((3, 48, 48), 100, np.uint8))
    paths = g.write(tmp_path, "val", "val")
    empty = Gallery(threshold=0.5, iou=IOU, min_object_px=MIN_PX).write(tmp_path / "e", "val", "val")
    for p in [*paths.values(), *empty.values()]:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 200


def test_gallery_ratio_is_the_middle_ratio():
    assert gallery_ratio([1000, 200, 500]) == 500 and gallery_ratio([200]) == 200


def test_evaluate_writes_the_gallery_that_matches_its_metrics(tmp_path):
    """evaluate() on a tiny dataset with a hand-made model: the gallery's false positives per tile
    are those of an accumulator fed the same probabilities."""
    from datasets import make_dataset
    from packages import RedMask, make_predictor

    from rts.config import EvaluateConfig
    from rts.data.splits import resolve_splits
    from rts.data.store import TileStore
    from rts.evaluation.evaluate import evaluate, load_logits, sigmoid

    root = make_dataset(tmp_path / "data", size=32, regions={"alpha": (2, 2), "bravo": (3, 5), "charlie": (2, 4)})
    # a false alarm: a bright square on one negative val tile (RedMask predicts where R is high)
    import rasterio

    path = root / "PLANET-RGB" / "bravo_005.tif"
    with rasterio.open(path, "r+") as ds:
        rgb = ds.read()
        rgb[0, 2:14, 2:14] = 255
        ds.write(rgb)
    manifests = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    store = TileStore(root, None)
    ev = EvaluateConfig(ratios=[200], iou_thresholds=[0.3], primary_iou=0.3, n_bins=100, n_object_thresholds=10, min_object_px=8,
                        gallery_cases=4, recall_targets=[0.5])
    ids = [t.tile_id for m in manifests.values() for t in m.tiles]
    evaluate(make_predictor(RedMask(), tile_size=32), store, manifests, sorted(set(ids)), ev, logits_dir=tmp_path / "eval/logits",
             plots_dir=tmp_path / "plots", metrics_path=tmp_path / "m.json", test_metrics_path=tmp_path / "t.json")
    listing = json.loads((tmp_path / "eval/gallery_val_realistic.json").read_text())
    expected = {}
    for rec in manifests["val_realistic"].tiles:
        acc = EvalAccumulator(n_bins=100, operating_threshold=ev.threshold, iou_thresholds=(0.3,), min_object_px=8)
        acc.update(sigmoid(load_logits(tmp_path / "eval/logits", rec.tile_id)), store.load(rec.tile_id).label, positive_tile=rec.positive)
        if acc.obj_op[:, 0, 1].sum():
            expected[rec.tile_id] = int(acc.obj_op[:, 0, 1].sum())
    assert listing["false_positives_per_tile"] == expected and "bravo_005" in expected
    assert {c["tile_id"] for c in listing["false_positives"]} == set(expected)
    for kind in ("false_positives", "missed", "fragmented"):
        assert (tmp_path / "plots/gallery" / f"val_realistic_{kind}.png").is_file()

    # calibrate's gallery: the same cases at the calibrated threshold, on sigmoid(z / T)
    from rts.config import CalibrateConfig
    from rts.evaluation.calibrate import calibrate, calibrated_gallery

    cfg = CalibrateConfig(target_precision=0.01, ratios=[200], iou=0.3, temperature_ratio=200)
    val, test = manifests["val_realistic"].tiles, manifests["test_realistic"].tiles
    calibrated = calibrate(ev=ev, cfg=cfg, store=store, val_tiles=val, test_tiles=test, logits_dir=tmp_path / "eval/logits")
    gallery, ratio, threshold = calibrated_gallery(ev, cfg, store, val, tmp_path / "eval/logits", calibrated.calibration)
    assert ratio == 200 and threshold == calibrated.calibration["thresholds"]["200"]["object"]["threshold"] is not None
    expected = {}
    for rec in val:
        acc = EvalAccumulator(n_bins=100, operating_threshold=threshold, iou_thresholds=(0.3,), min_object_px=8)
        prob = sigmoid(load_logits(tmp_path / "eval/logits", rec.tile_id) / calibrated.calibration["temperature"])
        acc.update(prob, store.load(rec.tile_id).label, positive_tile=rec.positive)
        if acc.obj_op[:, 0, 1].sum():
            expected[rec.tile_id] = int(acc.obj_op[:, 0, 1].sum())
    assert gallery.listing()["false_positives_per_tile"] == expected
    # per region at the calibrated threshold, as the model card tables it
    regions = calibrated.test_report["1:200"]["regions"]
    assert set(regions) == {t.region for t in test} and all("n_objects" in r and "obj_precision" in r for r in regions.values())


def test_model_card_links_the_gallery_and_reports_regions_with_too_few_objects():
    from rts.evaluation.package import GALLERY, gallery_lines, region_lines

    report = {"1:500": {"threshold": 0.61, "regions": {
        "bravo": {"n_objects": 12, "n_detections": 9, "obj_precision": 0.875, "obj_recall": 0.5833},
        "charlie": {"n_objects": 3, "n_detections": 7, "obj_precision": 0.7143, "obj_recall": 0.6667}}},
        "1:1000": {"threshold": None, "pr_auc": 0.4}}
    text = "\n".join(region_lines(report, 0.3))
    assert "| bravo | 1:500 | 0.6100 | 12 | 9 | 0.8750 | 0.5833 |" in text
    assert "| charlie | 1:500 | 0.6100 | 3 | 7 | 0.7143 | too few objects (3 RTS) |" in text
    assert "1:1000" not in text  # no calibrated threshold, no figure at a stand-in
    links = "\n".join(gallery_lines("experiment `x`"))
    for _, png in GALLERY:
        assert f"(../../plots/gallery/{png})" in links


def test_the_gallery_check_outside_a_finished_run_is_one_line(tmp_path):
    """scripts/check_gallery.py (make demo's last check) where the pipeline has not run: one line
    naming what is missing, exit 1, no traceback."""
    import shutil
    import subprocess
    import sys

    from workdir import REPO, env

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for args, missing in (([], "prepared/splits/val_realistic.json"), (["--params", "other.yaml"], "other.yaml")):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_gallery.py"), *args], cwd=tmp_path, env=env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: {missing}"), line
