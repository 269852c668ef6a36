"""DVC stage `evaluate`: one inference pass over val-realistic and test-realistic, every metric.

The model is rebuilt from its package alone (EMA weights, saved config, saved statistics); only the
``evaluate`` params (TTA, scales, metric settings) are read here.
"""

import logging
import sys
from pathlib import Path

from rts.config import load_params
from rts.errors import exit_on_error
from rts.data.dataset import open_store
from rts.data.splits import Manifest, read_metadata
from rts.evaluation.evaluate import evaluate
from rts.inference.predictor import load_predictor
from rts.metrics.keys import object_key, ratio_key
from rts.susceptibility import SusceptibilityFilter


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params("params.yaml")
    ev = params.evaluate
    predictor = load_predictor("models/train", device="cuda" if _cuda() else "cpu", tta=ev.tta, scales=tuple(ev.scales))
    manifests = {n: Manifest.load(Path("prepared/splits") / f"{n}.json") for n in ("val_balanced", "val_realistic", "test_realistic")}
    root = Path(params.data.root)
    store = open_store(root, params.data.cache)
    all_ids = [row["tile_id"] for row in read_metadata(root)]
    results = evaluate(predictor, store, manifests, all_ids, ev, logits_dir=Path("eval/logits"), plots_dir=Path("plots"),
                       metrics_path=Path("metrics/evaluate.json"), test_metrics_path=Path("metrics/evaluate_test.json"),
                       susceptibility=SusceptibilityFilter.from_params(params.susceptibility))
    for r in ev.ratios:
        v = results["val_realistic"][ratio_key(r)]
        p, rec = v[object_key(ev.primary_iou, "precision")], v[object_key(ev.primary_iou, "recall")]
        print(f"val-realistic 1:{r}: PR-AUC {v['pr_auc']}, pixel IoU {v['iou_rts']}, object P/R@{ev.primary_iou:g} {p}/{rec}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
