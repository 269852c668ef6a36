"""Check a finished pipeline's error galleries against the metrics library (issue 20).

``python scripts/check_gallery.py [--params FILE]`` in a workspace where evaluate and calibrate ran
(``make demo`` runs it; so does the pipeline test). For the gallery of evaluate (operating threshold,
``eval/gallery_val_realistic.json``) and that of calibrate (calibrated threshold and temperature,
``metrics/gallery_calibrated.json``) it feeds the saved val-realistic logits to an
:class:`~rts.metrics.EvalAccumulator` with the gallery's own settings, and requires:

- the false positives per tile of the listing to equal the accumulator's, tile by tile;
- the missed RTS per size class and the fragmented RTS to equal the accumulator's totals;
- every listed false-positive case to be on a tile the accumulator counts false positives on, and
  as many cases listed as ``n_cases`` allows;
- each mosaic PNG to exist and to be a plot ``dvc plots show`` renders.

Prints one line per gallery; a mismatch is one line naming the gallery and what differs, exit 1.
``--params`` names the params the run used (``make demo`` overrides them with ``-S``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from rts.config import load_params
from rts.data.dataset import open_store
from rts.data.splits import Manifest
from rts.errors import RtsError, one_line
from rts.evaluation.evaluate import load_logits, sigmoid
from rts.metrics import EvalAccumulator
from rts.metrics import objects as obj
from rts.susceptibility import SusceptibilityFilter

KINDS = ("false_positives", "missed", "fragmented")


class Mismatch(Exception):
    pass


def counts(listing: dict, probs, merge_distance_px: int) -> dict:
    """The accumulator's false positives per tile, missed RTS per size class and fragmented RTS, at
    the listing's threshold, IoU and minimum object size."""
    acc = EvalAccumulator(n_bins=100, operating_threshold=listing["threshold"], object_thresholds=[listing["threshold"]],
                          iou_thresholds=(listing["iou"],), min_object_px=listing["min_object_px"],
                          merge_distance_px=merge_distance_px)
    per_tile = {}
    for rec, prob, label in probs:
        before = int(acc.obj_op[:, 0, 1].sum())
        acc.update(prob, label, positive_tile=rec.positive, region=rec.region)
        added = int(acc.obj_op[:, 0, 1].sum()) - before
        if added:
            per_tile[rec.tile_id] = added
    missed = {cls: int(acc.size_gt[0, i, 0] - acc.size_gt[0, i, 1]) for i, cls in enumerate(obj.SIZE_CLASSES)}
    return {"per_tile": dict(sorted(per_tile.items())), "false_positives": int(acc.obj_op[:, 0, 1].sum()), "missed": missed,
            "fragmented": int(acc.frag[0, 1])}


def check(name: str, listing: dict, expected: dict, pngs: list[Path], plotted: set[str]) -> str:
    if listing["false_positives_per_tile"] != expected["per_tile"]:
        got, want = listing["false_positives_per_tile"], expected["per_tile"]
        diff = sorted(t for t in set(got) | set(want) if got.get(t) != want.get(t))
        raise Mismatch(f"{name}: false positives per tile differ from the accumulator's on {len(diff)} tile(s), "
                       f"e.g. {diff[0]}: listed {got.get(diff[0], 0)}, counted {want.get(diff[0], 0)}")
    totals = listing["totals"]
    for key in ("false_positives", "fragmented"):
        if totals[key] != expected[key]:
            raise Mismatch(f"{name}: {totals[key]} {key.replace('_', ' ')} listed, the accumulator counts {expected[key]}")
    if totals["missed"] != expected["missed"]:
        raise Mismatch(f"{name}: missed RTS per size class {totals['missed']}, the accumulator counts {expected['missed']}")
    listed = [c["tile_id"] for c in listing["false_positives"]]
    uncounted = [t for t in listed if t not in expected["per_tile"]]
    if uncounted:
        raise Mismatch(f"{name}: a listed false positive is on a tile the accumulator counts none on: {uncounted[0]}")
    if len(listed) != min(listing["n_cases"], expected["false_positives"]):
        raise Mismatch(f"{name}: {len(listed)} false positives listed, expected min(n_cases {listing['n_cases']}, "
                       f"{expected['false_positives']})")
    for png in pngs:
        if not png.is_file():
            raise Mismatch(f"{png}: missing; rerun the stage that writes it")
        if png.as_posix() not in plotted:
            raise Mismatch(f"{png}: not a plot of `dvc plots show` (dvc.yaml's top-level plots)")
    n_missed = sum(expected["missed"].values())
    return (f"{name} (threshold {listing['threshold']:.4g}, IoU {listing['iou']:g}): {expected['false_positives']} false "
            f"positives on {len(expected['per_tile'])} tiles ({len(listed)} shown), {n_missed} missed RTS, "
            f"{expected['fragmented']} fragmented: equal to the accumulator; {len(pngs)} PNGs, all DVC plots")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params the run used (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        store = open_store(Path(params.data.root), params.data.cache)
        tiles = Manifest.load(Path("prepared/splits/val_realistic.json")).tiles
        keep = SusceptibilityFilter.from_params(params.susceptibility)
    except RtsError as e:  # its line names the file or key and the fix
        print(one_line(e), file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}; run the pipeline in this folder first, or pass the params the run used with --params", file=sys.stderr)
        return 1
    logits_dir = Path("eval/logits")
    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"error: dvc plots show --json failed here: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        return 1
    shown = proc.stdout
    plots = json.loads(shown).get("data", {}) if shown.strip() else {}
    plotted = {k for k, entries in plots.items() if any(e.get("type") == "image" for e in entries)}

    def probs(temperature: float, filtered: bool):
        for rec in tiles:
            prob = sigmoid(load_logits(logits_dir, rec.tile_id) / temperature)
            yield rec, (keep.keep_tile(store.root, rec.tile_id, prob) if filtered else prob), np.asarray(store.load(rec.tile_id).label)

    lines = []
    try:
        listing = json.loads(Path("eval/gallery_val_realistic.json").read_text())
        if listing["min_object_px"] != params.evaluate.min_object_px:
            raise Mismatch(f"{args.params}: evaluate.min_object_px {params.evaluate.min_object_px} is not the run's "
                           f"({listing['min_object_px']}); pass the params the run used with --params")
        pngs = [Path(f"plots/gallery/val_realistic_{k}.png") for k in KINDS]
        lines.append(check("evaluate's gallery", listing, counts(listing, probs(1.0, False), params.evaluate.merge_distance_px), pngs, plotted))
        calibrated = json.loads(Path("metrics/gallery_calibrated.json").read_text())
        pngs = [Path(f"plots/gallery_calibrated/val_realistic_calibrated_{k}.png") for k in KINDS]
        head = json.loads(Path("metrics/headline.json").read_text())
        temperature = head["temperature"]
        if head["val_realistic"][f"1:{calibrated['ratio']}"]["threshold"] is None:
            lines.append(f"calibrate's gallery: no calibrated threshold at 1:{calibrated['ratio']}, no cases to check")
        else:
            lines.append(check(f"calibrate's gallery (T {temperature:.4g})", calibrated,
                               counts(calibrated, probs(temperature, True), params.evaluate.merge_distance_px), pngs, plotted))
    except Mismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}; run the pipeline (evaluate and calibrate) in this folder first", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
