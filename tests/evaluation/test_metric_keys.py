"""Every match IoU that config validation accepts names the same metric keys in training's
validation, the evaluate stage, calibration and the model card.

The keys were once assembled in seven places that disagreed (``obj_iou1.0`` in training against
``obj_iou1`` in the metric library), so ``evaluate.primary_iou: 1.0`` passed validation and then
raised KeyError at the first validation of a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets import make_dataset
from packages import RedMask, identity_stats, make_predictor
from rts.config import load_params
from rts.data.dataset import TileDataset
from rts.data.normalization import Normalizer
from rts.data.splits import read_metadata, resolve_splits
from rts.data.store import TileStore
from rts.evaluation.calibrate import calibrate
from rts.evaluation.evaluate import evaluate
from rts.evaluation.package import model_card
from rts.metrics.keys import object_key, ratio_key
from rts.training.loop import run_validation
from workdir import REPO


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("keys") / "ds", size=32, regions={"alpha": (2, 2), "bravo": (3, 4), "charlie": (3, 4)})
    return root, resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)


@pytest.mark.parametrize("iou", [0.1, 0.3, 0.5, 1.0])
def test_every_accepted_iou_runs_validation_evaluation_calibration_and_the_card(dataset, tmp_path, iou):
    root, manifests = dataset
    params = load_params(REPO / "params.yaml", overrides={
        "evaluate.iou_thresholds": [iou], "evaluate.primary_iou": iou, "evaluate.ratios": [200], "evaluate.n_bins": 100,
        "evaluate.n_object_thresholds": 10, "evaluate.min_object_px": 5, "evaluate.batch_size": 4,
        "train.early_stopping_ratio": 200, "calibrate.iou": iou, "calibrate.ratios": [200], "calibrate.temperature_ratio": 200,
        "calibrate.temperature_bins": 500,
    })
    ev, store = params.evaluate, TileStore(root)

    # training's validation (what early stopping and the logs read)
    val_tiles = manifests["val_realistic"].tiles
    balanced = {t.tile_id for t in manifests["val_balanced"].tiles}
    val_ds = TileDataset(store, val_tiles, Normalizer(identity_stats(), []), boundary_ignore_width=0)
    val_sets = {"loader": DataLoader(val_ds, batch_size=4), "regions": [t.region for t in val_tiles],
                "members": {"val_balanced": [t.tile_id in balanced for t in val_tiles], "val_realistic": [True] * len(val_tiles)}}
    logged = run_validation(RedMask(), val_sets, loss_fn=lambda o, t, v: o.mean(), device=torch.device("cpu"),
                            amp=(False, None, False), params=params)
    assert {"val_200_obj_precision", "val_200_obj_recall", "val_realistic_pr_auc"} <= set(logged)
    assert not math.isnan(logged["val_200_obj_recall"])

    # the evaluate stage's report, then calibration and the test report on its logits
    ids = [r["tile_id"] for r in read_metadata(root)]
    results = evaluate(make_predictor(RedMask(), tile_size=32), store, manifests, ids, ev, logits_dir=tmp_path / "eval/logits",
                       plots_dir=tmp_path / "plots", metrics_path=tmp_path / "evaluate.json", test_metrics_path=tmp_path / "test.json")
    assert object_key(iou, "precision") in results["val_realistic"][ratio_key(200)]
    calibration, test_report, *_ = calibrate(ev=ev, cfg=params.calibrate, store=store, val_tiles=val_tiles,
                                            test_tiles=manifests["test_realistic"].tiles, logits_dir=tmp_path / "eval/logits")
    entry = test_report[ratio_key(200)]
    assert entry["threshold"] is not None and object_key(iou, "recall") in entry
    assert np.isfinite(entry[object_key(iou, "recall")])
    package = {"model_config": {"arch": "unet", "encoder": "resnet18", "encoder_weights": None, "fusion": "early"},
               "data_config": {"extra_channels": [], "tile_size": 32}, "normalization_stats_sha256": "0" * 64}
    card = model_card(package, {**calibration, "tta": "none", "scales": [1.0]}, test_report, ev.iou_thresholds)
    assert f"obj P@{iou:g}" in card
