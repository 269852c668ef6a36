"""DVC stage `evaluate`: one inference pass over val-realistic and test-realistic, every metric.

The model is rebuilt from its package alone (EMA weights, saved config, saved statistics); only the
``evaluate`` params (TTA, scales, metric settings) are read here.
"""

import sys
from pathlib import Path

from rts.config import load_params
from rts.errors import exit_on_error
from rts.logs import configure
from rts.data.dataset import open_store
from rts.data.splits import Manifest, read_metadata
from rts.evaluation.evaluate import evaluate
from rts.inference.predictor import load_predictor
from rts.metrics.keys import object_key, ratio_key
from rts.susceptibility import SusceptibilityFilter


def main() -> int:
    configure()
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
    iou = ev.primary_iou
    print(f"val-realistic  {'PR-AUC':>7} {'pixel IoU':>9} {f'obj P@{iou:g}':>9} {f'obj R@{iou:g}':>9}  (threshold {ev.threshold:g}, uncalibrated)")
    for r in ev.ratios:
        v = results["val_realistic"][ratio_key(r)]
        cells = [v["pr_auc"], v["iou_rts"], v[object_key(iou, "precision")], v[object_key(iou, "recall")]]
        print(f"{f'1:{r}':<14} " + " ".join(f"{'n/a' if x is None else f'{x:.4f}':>{w}}" for x, w in zip(cells, (7, 9, 9, 9))))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
