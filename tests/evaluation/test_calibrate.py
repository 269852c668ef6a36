"""Temperature scaling, threshold selection, test-label independence, the model package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import make_dataset  # noqa: E402

from rts.evaluation.calibrate import LogitHistogram, calibrate, fit_temperature, reliability, select_threshold  # noqa: E402
from rts.config import CalibrateConfig, DataConfig, EvaluateConfig, ModelConfig, to_dict  # noqa: E402
from rts.data.normalization import compute_stats, stats_hash  # noqa: E402
from rts.data.splits import resolve_splits  # noqa: E402
from rts.data.store import TileStore  # noqa: E402
from rts.evaluation.evaluate import save_logits  # noqa: E402
from rts.inference.predictor import load_predictor  # noqa: E402
from rts.io import write_geotiff, write_json_atomic  # noqa: E402
from rts.evaluation.package import write_package  # noqa: E402
from rts.training.checkpoint import save_atomic  # noqa: E402


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(0)
    hist = LogitHistogram(2000)
    for _ in range(4):
        z = rng.normal(0, 4, size=(256, 256))
        y = (rng.random(z.shape) < 1 / (1 + np.exp(-z / true_t))).astype(np.uint8)
        hist.update(z, y, positive_tile=True)
    t = fit_temperature(hist, ratio=None)
    assert t == pytest.approx(true_t, rel=0.03)
    assert reliability(hist, None, t)["ece"] < reliability(hist, None, 1.0)["ece"] or true_t == 1.0


def test_temperature_ignores_label_255_and_weights_negative_tiles():
    hist = LogitHistogram(200)
    z = np.array([[5.0, -5.0], [0.0, 9.0]])
    hist.update(z, np.array([[1, 0], [255, 255]], np.uint8), positive_tile=True)
    hist.update(z, np.zeros((2, 2), np.uint8), positive_tile=False)
    assert hist.counts.sum() == 2 + 4
    w = hist.weighted(ratio=10)  # 1 positive tile, 1 negative tile -> w = 10
    assert w[1].sum() == 1 and w[0].sum() == 1 + 10 * 4


#            thresholds           tp              fp            fn         target  expected threshold / reached
CASES = [
    ([0.1, 0.3, 0.5, 0.7], [10, 8, 6, 2], [10, 4, 1, 0], [0, 2, 4, 8], 0.8, 0.5, True),   # P: .5 .67 .857 1
    ([0.1, 0.3, 0.5, 0.7], [10, 8, 6, 2], [10, 2, 1, 0], [0, 2, 4, 8], 0.8, 0.3, True),   # P: .5 .8 -> lowest
    ([0.1, 0.3, 0.5, 0.7], [10, 8, 6, 2], [10, 5, 4, 1], [0, 2, 4, 8], 0.8, None, False),  # P .5 .62 .6 .67
]


@pytest.mark.parametrize("thr, tp, fp, fn, target, expected, reached", CASES)
def test_threshold_selection_on_a_hand_built_curve(thr, tp, fp, fn, target, expected, reached):
    out = select_threshold(*(np.array(a, float) for a in (thr, tp, fp, fn)), target)
    assert out["reached"] is reached
    assert out["threshold"] == expected
    if reached:
        i = thr.index(expected)
        assert out["precision"] == pytest.approx(tp[i] / (tp[i] + fp[i])) and out["recall"] == pytest.approx(tp[i] / (tp[i] + fn[i]))
    else:
        assert out["best_precision"] == pytest.approx(2 / 3) and out["best_precision_threshold"] == 0.7
        assert "not reached" in out["note"]


def _fake_logits(root: Path, logits_dir: Path, tiles, seed=0):
    """Logits that agree with the labels plus noise (a decent model)."""
    rng = np.random.default_rng(seed)
    store = TileStore(root)
    for rec in tiles:
        label = store.load(rec.tile_id).label
        z = np.where(label == 1, 3.0, -3.0) + rng.normal(0, 2.0, label.shape)
        save_logits(logits_dir, rec.tile_id, z)


def test_calibration_output_is_unchanged_when_test_labels_change(tmp_path):
    root = make_dataset(tmp_path / "ds", size=32, regions={"alpha": (2, 2), "bravo": (4, 8), "charlie": (4, 8)})
    m = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    logits_dir = tmp_path / "logits"
    _fake_logits(root, logits_dir, m["val_realistic"].tiles + m["test_realistic"].tiles)
    ev = EvaluateConfig(n_bins=500, n_object_thresholds=20, min_object_px=5)
    cfg = CalibrateConfig(ratios=[200, 500], temperature_bins=500)
    run = lambda: calibrate(ev=ev, cfg=cfg, store=TileStore(root), val_tiles=m["val_realistic"].tiles,  # noqa: E731
                            test_tiles=m["test_realistic"].tiles, logits_dir=logits_dir)
    cal1, test1, *_ = run()
    # rewrite every test label: RTS everywhere on positive tiles
    for rec in m["test_realistic"].tiles:
        if rec.positive:
            path = root / "labels" / f"{rec.tile_id}.tif"
            import rasterio

            with rasterio.open(path) as src:
                transform = src.transform
            write_geotiff(path, np.ones((1, 32, 32), np.uint8), transform)
    cal2, test2, *_ = run()
    assert json.dumps(cal1, sort_keys=True) == json.dumps(cal2, sort_keys=True)
    assert test1 != test2
    assert set(cal1["thresholds"]) == {"200", "500"} and cal1["fitted_on"] == "val_realistic"


def _package(tmp_path: Path) -> Path:
    root = make_dataset(tmp_path / "ds", size=32)
    store = TileStore(root)
    ids = [f"alpha_{i:03d}" for i in range(4)]
    stats = compute_stats(ids, tile_loader=lambda t: (store.load(t).rgb, store.load(t).extra), clip_percentiles=(1.0, 99.0),
                          sample_px_per_tile=2000, dataset_version="2.0")
    from rts.models import build_model

    model_cfg = ModelConfig(arch="unet", encoder="resnet18", encoder_weights=None)
    data_cfg = DataConfig(tile_size=32, extra_channels=["ndvi"])
    torch.manual_seed(0)
    model = build_model(model_cfg, in_channels=4, n_extra=1).eval()
    train_dir = tmp_path / "models/train"
    save_atomic({"format": "rts-model/1", "state_dict": model.state_dict(), "model_config": to_dict(model_cfg),
                 "data_config": to_dict(data_cfg), "config": {}, "normalization_stats": stats,
                 "normalization_stats_sha256": stats_hash(stats), "dataset_version": "2.0", "git_commit": "abc"}, train_dir / "model.pt")
    write_json_atomic(train_dir / "normalization_stats.json", stats)
    return train_dir, model, store, stats


def test_model_package_round_trips_with_identical_predictions(tmp_path):
    train_dir, model, store, stats = _package(tmp_path)
    cal = {"temperature": 2.0, "temperature_ratio": 500, "nll_before": 0.1, "nll_after": 0.09, "ece_before": 0.02,
           "ece_after": 0.01, "target_precision": 0.8, "object_iou": 0.3, "tta": "none", "scales": [1.0],
           "thresholds": {"500": {"object": {"threshold": 0.4, "reached": True, "precision": 0.9, "recall": 0.6},
                                  "pixel": {"threshold": None, "reached": False, "best_precision": 0.5}}}}
    pkg = write_package(train_dir, tmp_path / "models/rts-model", cal, {"1:500": {"threshold": 0.4, "iou_rts": 0.5}}, [0.3, 0.5])
    assert "Test-realistic" in (pkg / "model_card.md").read_text()
    pred = load_predictor(pkg)
    tile = store.load("alpha_000")
    raw = torch.from_numpy(np.concatenate([tile.rgb.astype(np.float32), tile.extra[:1]])[None])
    from rts.data.normalization import Normalizer

    x = torch.from_numpy(Normalizer(stats, ["ndvi"])(raw[0].numpy())[None])
    with torch.no_grad():
        expected = torch.sigmoid(model(x) / 2.0)
    torch.testing.assert_close(pred.probabilities({1.0: raw}), expected)
    assert pred.threshold(500, "object") == 0.4
    with pytest.raises(ValueError, match="not reached"):
        pred.threshold(500, "pixel")
    # a statistics file that differs from the one the model was trained with is refused
    changed = json.loads((pkg / "normalization_stats.json").read_text())
    changed["rgb"]["mean"][0] += 1.0
    write_json_atomic(pkg / "normalization_stats.json", changed)
    with pytest.raises(ValueError, match="does not match"):
        load_predictor(pkg)


def test_the_package_is_written_as_a_unit(tmp_path, monkeypatch):
    """A calibrate run killed between model.pt and threshold_calibration.json used to leave new
    weights beside the old calibration, and load_predictor loaded the mix. A failure at any write
    now leaves the previous package whole and no temporary folder."""
    from rts.evaluation import package as P

    train_dir, _, _, _ = _package(tmp_path)
    cal = {"temperature": 2.0, "temperature_ratio": 500, "nll_before": 0.1, "nll_after": 0.09, "ece_before": 0.02, "ece_after": 0.01,
           "target_precision": 0.8, "object_iou": 0.3, "tta": "none", "scales": [1.0],
           "thresholds": {"500": {"object": {"threshold": 0.4, "reached": True, "precision": 0.9, "recall": 0.6},
                                  "pixel": {"threshold": None, "reached": False, "best_precision": 0.5}}}}
    out = tmp_path / "models/rts-model"
    write_package(train_dir, out, cal, {}, [0.3])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = P.write_json_atomic

    def killed(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(P, "write_json_atomic", killed)
    with pytest.raises(OSError):
        write_package(train_dir, out, {**cal, "temperature": 3.0}, {}, [0.3])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")], "no temporary folder is left"
    monkeypatch.setattr(P, "write_json_atomic", real)
    write_package(train_dir, out, {**cal, "temperature": 3.0}, {}, [0.3])
    assert load_predictor(out).temperature == 3.0
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]


def test_a_ratio_without_a_calibrated_threshold_reports_no_row_at_a_stand_in_threshold(tmp_path):
    """The test report used to score test-realistic at the best-precision threshold (0.010 in the
    demo) when no threshold reached the target, and the card printed that row as if calibrated."""
    from rts.evaluation.calibrate import headline
    from rts.evaluation.package import model_card

    root = make_dataset(tmp_path / "ds", size=32, regions={"alpha": (2, 2), "bravo": (4, 8), "charlie": (4, 8)})
    m = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    logits_dir = tmp_path / "logits"
    rng = np.random.default_rng(0)
    for rec in m["val_realistic"].tiles + m["test_realistic"].tiles:  # a model that knows nothing: noise
        label = TileStore(root).load(rec.tile_id).label
        save_logits(logits_dir, rec.tile_id, np.where(label == 1, 0.5, 0.0) + rng.normal(0, 3.0, label.shape))
    ev = EvaluateConfig(n_bins=500, n_object_thresholds=20, min_object_px=5)
    cfg = CalibrateConfig(ratios=[200], temperature_bins=500, target_precision=0.99)
    calibrated = calibrate(ev=ev, cfg=cfg, store=TileStore(root), val_tiles=m["val_realistic"].tiles,
                           test_tiles=m["test_realistic"].tiles, logits_dir=logits_dir)
    assert calibrated.calibration["thresholds"]["200"]["object"]["reached"] is False
    for report in (calibrated.test_report, calibrated.val_report):
        entry = report["1:200"]
        assert entry["threshold"] is None and "not reached" in entry["note"]
        assert set(entry) == {"threshold", "threshold_reached_target_on_val", "pr_auc", "note"}  # PR-AUC needs no threshold
        assert 0.0 <= entry["pr_auc"] <= 1.0
    head = headline(calibrated, cfg.iou)
    assert head["test_realistic"]["1:200"]["threshold"] is None and head["test_realistic"]["1:200"]["iou_rts"] is None
    package = {"model_config": {"arch": "unet", "encoder": "resnet18", "encoder_weights": None, "fusion": "early"},
               "data_config": {"extra_channels": [], "tile_size": 32}, "normalization_stats_sha256": "0" * 64}
    card = model_card(package, {**calibrated.calibration, "tta": "none", "scales": [1.0]}, calibrated.test_report, ev.iou_thresholds)
    row = next(line for line in card.splitlines() if line.startswith("| 1:200 |") and "PR-AUC" not in line and "pixel IoU" not in line
               and line.count("|") > 8)
    assert "not reached" in row and "0.010" not in row


def test_headline_holds_a_few_numbers_per_split_at_the_calibrated_thresholds(tmp_path):
    from rts.evaluation.calibrate import headline

    root = make_dataset(tmp_path / "ds", size=32, regions={"alpha": (2, 2), "bravo": (4, 8), "charlie": (4, 8)})
    m = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200, 500], seed=0)
    logits_dir = tmp_path / "logits"
    _fake_logits(root, logits_dir, m["val_realistic"].tiles + m["test_realistic"].tiles)
    ev = EvaluateConfig(n_bins=500, n_object_thresholds=20, min_object_px=5)
    cfg = CalibrateConfig(ratios=[200, 500], temperature_bins=500, target_precision=0.5)
    calibrated = calibrate(ev=ev, cfg=cfg, store=TileStore(root), val_tiles=m["val_realistic"].tiles,
                           test_tiles=m["test_realistic"].tiles, logits_dir=logits_dir)
    head = headline(calibrated, 0.3)
    assert set(head) == {"temperature", "val_realistic", "test_realistic"}
    for split in ("val_realistic", "test_realistic"):
        assert set(head[split]) == {"1:200", "1:500"}
        for ratio, entry in head[split].items():
            assert set(entry) == {"threshold", "pr_auc", "obj_iou0.3_precision", "obj_iou0.3_recall", "ap50", "iou_rts"}
            chosen = calibrated.calibration["thresholds"][ratio[2:]]["object"]
            assert entry["threshold"] == (chosen["threshold"] if chosen["reached"] else None)
    n = sum(len(e) for split in ("val_realistic", "test_realistic") for e in head[split].values()) + 1
    assert n <= 2 * 24 + 1


def test_model_card_numbers_keep_their_digits_and_the_card_names_use_limits_and_data(tmp_path):
    from rts.evaluation.package import _fmt, model_card, training_data

    assert _fmt(0.9995) == "0.9995" and _fmt(0.99995) == "0.99995" and _fmt(1.0) == "1.0000" and _fmt(0.00004) == "0.00004"
    (tmp_path / "version.json").write_text(json.dumps({"dataset_version": "2.0", "generator": "rts-synth/3"}))
    data = training_data(tmp_path)
    assert "SYNTHETIC" in data and "rts-synth/3" in data
    package = {"model_config": {"arch": "unet", "encoder": "resnet18", "encoder_weights": None, "fusion": "early"},
               "data_config": {"extra_channels": [], "tile_size": 32}, "normalization_stats_sha256": "0" * 64, "mlflow_run_id": "abc123"}
    cal = {"temperature": 2.0, "temperature_ratio": 500, "nll_before": 0.1, "nll_after": 0.09, "ece_before": 0.02,
           "ece_after": 0.01, "target_precision": 0.8, "object_iou": 0.3, "tta": "none", "scales": [1.0],
           "thresholds": {"500": {"object": {"threshold": 0.4, "reached": True, "precision": 0.9995, "recall": 0.6},
                                  "pixel": {"threshold": None, "reached": False, "best_precision": 0.5}}}}
    card = model_card(package, cal, {"1:500": {"threshold": 0.4, "iou_rts": 0.99995}}, [0.3], data=data, mlflow="experiment `x`")
    for heading in ("## Intended use", "## Limitations", "## Training data"):
        assert heading in card
    assert "SYNTHETIC" in card and "`abc123` in experiment `x`" in card and "0.9995" in card and "0.99995" in card


def test_pr_plot_files_keep_the_curve_in_a_few_hundred_points():
    """10,000 pixel thresholds used to go to the browser as 10,000 points per curve."""
    from rts.evaluation.evaluate import curve_records

    t = np.linspace(0, 1, 10000)
    curve = {"threshold": list(t), "precision": list(0.2 + 0.8 * t ** 2), "recall": list(1 - t ** 0.5)}
    records = curve_records(curve)
    assert 100 < len(records) < 1500
    assert records[0]["threshold"] == 0.0 and records[-1]["threshold"] == 1.0
    pairs = [(r["precision"], r["recall"]) for r in records]
    gaps = [max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(pairs, pairs[1:])]
    assert max(gaps) < 0.02  # no visible jump: the kept points trace the curve
