"""Writing the deployable model package ``models/rts-model/`` and its model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rts.inference.predictor import (
    CALIBRATION_FILE,
    MODEL_FILE,
    STATS_FILE,
    load_package,
)
from rts.io import write_json_atomic, write_text_atomic
from rts.metrics.keys import ap_key, object_key
from rts.training.checkpoint import save_atomic


def _fmt(x) -> str:
    """Four decimals, more where four would round a value onto 0 or 1 (0.99995 is not "1.0000")."""
    if x is None:
        return "n/a"
    if not isinstance(x, float):
        return str(x)
    for digits in range(4, 9):
        text = f"{x:.{digits}f}"
        if float(text) not in (0.0, 1.0) or float(text) == x:
            return text
    return f"{x:.3e}"


def training_data(root: Path) -> str:
    """What the model was trained on, from the dataset's ``version.json``: a synthetic dataset says so."""
    try:
        version = json.loads((Path(root) / "version.json").read_text())
    except (OSError, ValueError):
        return f"`{root}` (no readable version.json)"
    text = f"dataset version `{version.get('dataset_version', 'unknown')}` from `{root}`"
    if version.get("generator"):
        return (f"SYNTHETIC tiles written by `rts synth` (generator `{version['generator']}`), {text}: "
                "the numbers below say nothing about real PlanetScope imagery")
    return text + " (PlanetScope RGB tiles with RTS labels refined from ARTS)"


def _susceptibility(calibration: dict) -> str:
    s = calibration.get("susceptibility") or {}
    if not s.get("path"):
        return "none"
    return f"`{s['path']}`, objects where likelihood < {s.get('min_likelihood')} dropped (use the same layer at inference)"


MIN_REGION_OBJECTS = 5  # fewer RTS (recall) or detections (precision) in a region: "too few objects", no figure
# evaluate's error gallery (rts.evaluation.gallery), from the package folder models/rts-model/
GALLERY = (("false positives by prevalence-weighted cost", "val_realistic_false_positives.png"),
           ("missed RTS by size class", "val_realistic_missed.png"),
           ("fragmented detections", "val_realistic_fragmented.png"))


def region_lines(test_report: dict, iou: float) -> list[str]:
    """The model card's per-region table: object precision and recall per region at each ratio's
    calibrated threshold on test-realistic, "too few objects" where a region has fewer than
    :data:`MIN_REGION_OBJECTS` RTS (recall) or detections (precision)."""
    rows = []
    for ratio, e in test_report.items():
        if e.get("threshold") is None or not e.get("regions"):
            continue
        for region, r in e["regions"].items():
            n_obj, n_det = r.get("n_objects", 0), r.get("n_detections", 0)
            p = _fmt(r.get("obj_precision")) if n_det >= MIN_REGION_OBJECTS else f"too few objects ({n_det} detections)"
            rec = _fmt(r.get("obj_recall")) if n_obj >= MIN_REGION_OBJECTS else f"too few objects ({n_obj} RTS)"
            rows.append(f"| {region} | {ratio} | {_fmt(e['threshold'])} | {n_obj} | {n_det} | {p} | {rec} |")
    if not rows:
        return ["", "## Per region (test-realistic, calibrated thresholds)", "", "No calibrated threshold: no per-region figures.", ""]
    return ["", "## Per region (test-realistic, calibrated thresholds)", "",
            f"Object precision and recall at IoU {iou:g}; negative tiles weighted to the ratio as in the totals. "
            f"A region with fewer than {MIN_REGION_OBJECTS} RTS or detections has no figure.", "",
            "| region | ratio | threshold | RTS | detections | object precision | object recall |", "|---|---|---|---|---|---|---|",
            *rows, ""]


def gallery_lines(mlflow: str | None) -> list[str]:
    lines = ["## Error gallery (val-realistic)", "",
             "DVC image plots (`dvc plots diff` shows two experiments side by side)"
             + (", and MLflow artifacts under `final/` of the run." if mlflow else "."), "",
             "- At the operating threshold `evaluate.threshold` (evaluate stage; cases in `eval/gallery_val_realistic.json`): "
             + ", ".join(f"[{name}](../../plots/gallery/{png})" for name, png in GALLERY),
             "- At the calibrated object threshold of the middle ratio (calibrate stage; cases in `metrics/gallery_calibrated.json`): "
             + ", ".join(f"[{name}](../../plots/gallery_calibrated/{png.replace('val_realistic_', 'val_realistic_calibrated_')})"
                       for name, png in GALLERY), ""]
    return lines


def model_card(package: dict, calibration: dict, test_report: dict, ious: list[float], *, data: str = "not recorded",
               mlflow: str | None = None) -> str:
    """The package's ``model_card.md``. ``data`` describes the training data (:func:`training_data`);
    ``mlflow`` names where the run is tracked."""
    m, d = package["model_config"], package["data_config"]
    run = package.get("mlflow_run_id")
    lines = [
        "# RTS segmentation model card",
        "",
        "Retrogressive Thaw Slump segmentation for 3 m PlanetScope tiles, trained for high instance-level",
        "precision at acceptable recall under extreme class imbalance (generated by the calibrate stage).",
        "",
        "## Intended use",
        "",
        "- Mapping candidate RTS in 3 m PlanetScope RGB scenes of the Arctic permafrost zone, with `rts predict`, at the",
        "  calibrated threshold of the prevalence ratio that matches the mapped area (1:200 to 1:1000 of tiles).",
        "- Candidates for expert review: detections are confirmed by a person before they enter a map or an inventory.",
        "",
        "## Limitations",
        "",
        "- Precision is calibrated on val-realistic regions; other regions, seasons, sensors or resolutions shift it.",
        "- Objects under the minimum size (`evaluate.min_object_px`) are not reported; outlines follow 3 m pixels.",
        "- RTS need both a shadowed headwall and a barren floor to be visible: snow, cloud and low sun hide them.",
        "- A ratio whose target precision was not reached has no threshold: the model must not be used at that prevalence.",
        "",
        "## Training data",
        "",
        f"- {data}",
        "",
        "## Model",
        "",
        f"- Architecture: `{m['arch']}` with encoder `{m['encoder']}` (initial weights: `{m['encoder_weights']}`)",
        f"- Input: RGB + EXTRA {d['extra_channels'] or '(none)'}, {d['tile_size']} px tiles, fusion `{m['fusion']}`",
        "- Weights: EMA of the best validation step (monitored `val_realistic_pr_auc`)",
        f"- Dataset version: `{package.get('dataset_version')}`; training commit `{package.get('git_commit')}`",
        f"- Normalisation statistics sha256: `{package['normalization_stats_sha256']}`",
        f"- Inference: TTA `{calibration.get('tta')}`, scales {calibration.get('scales')}",
        f"- MLflow run: `{run}`" + (f" in {mlflow}" if mlflow and run else "") if run else "- MLflow run: none (tracking off)",
        "",
        "## Calibration (val-realistic only)",
        "",
        f"- Temperature T = {calibration['temperature']:.4f} (fitted at 1:{calibration['temperature_ratio']}):"
        f" NLL {calibration['nll_before']:.5f} -> {calibration['nll_after']:.5f},"
        f" ECE {calibration['ece_before']:.5f} -> {calibration['ece_after']:.5f}",
        f"- Thresholds: lowest threshold reaching precision {calibration['target_precision']} on val-realistic",
        f"- Susceptibility filter: {_susceptibility(calibration)}",
        "",
        "| ratio | object threshold (IoU {}) | val precision | val recall | pixel threshold |".format(calibration["object_iou"]),
        "|---|---|---|---|---|",
    ]
    for r, t in calibration["thresholds"].items():
        o, p = t["object"], t["pixel"]
        ot = _fmt(o["threshold"]) if o["reached"] else f"not reached (best precision {_fmt(o.get('best_precision'))})"
        pt = _fmt(p["threshold"]) if p["reached"] else f"not reached (best {_fmt(p.get('best_precision'))})"
        lines.append(f"| 1:{r} | {ot} | {_fmt(o.get('precision'))} | {_fmt(o.get('recall'))} | {pt} |")
    n_cols = 6 + 2 * len(ious) + 1
    lines += ["", "## Test-realistic results at the calibrated object thresholds", "",
              "| ratio | threshold | pixel IoU | pixel P | pixel R | PR-AUC | " + " | ".join(f"obj P@{t:g} | obj R@{t:g}" for t in ious) + " | AP@0.5 |",
              "|" + "---|" * n_cols]
    for ratio, e in test_report.items():
        if e.get("threshold") is None:  # no calibrated threshold: nothing is reported at a stand-in
            lines.append(f"| {ratio} | not reached | " + " | ".join(["-"] * 3 + [_fmt(e.get("pr_auc"))] + ["-"] * (n_cols - 6)) + " |")
            continue
        cells = [ratio, _fmt(e.get("threshold")), _fmt(e.get("iou_rts")), _fmt(e.get("precision")), _fmt(e.get("recall")), _fmt(e.get("pr_auc"))]
        cells += [_fmt(e.get(object_key(t, m))) for t in ious for m in ("precision", "recall")]
        cells.append(_fmt(e.get(ap_key(0.5))))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Test-realistic numbers are reported once here and never used for tuning. PR-AUC is the pixel-level",
              "area under the precision-recall curve; it needs no threshold."]
    lines += region_lines(test_report, calibration.get("object_iou", 0.3))
    lines += gallery_lines(mlflow)
    return "\n".join(lines)


def write_package(train_package_dir: Path, out_dir: Path, calibration: dict, test_report: dict, ious: list[float], *,
                  data: str = "not recorded", mlflow: str | None = None) -> Path:
    """Copy the trained model into ``out_dir`` with calibration and a model card, as a unit.

    Weights, statistics, calibration and card are written into a sibling temporary folder that then
    replaces ``out_dir``: a run killed half-way used to leave new weights beside the old calibration,
    which ``load_predictor`` loaded. A kill now leaves the previous package, or (inside the swap of
    two renames) the previous one under ``.<name>.old``; leftovers are removed on the next write.
    """
    package = load_package(train_package_dir)
    package["temperature"] = calibration["temperature"]
    package["thresholds"] = calibration["thresholds"]
    tmp, old = out_dir.parent / f".{out_dir.name}.tmp", out_dir.parent / f".{out_dir.name}.old"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_atomic(package, tmp / MODEL_FILE)
        shutil.copyfile(train_package_dir / STATS_FILE, tmp / STATS_FILE)
        write_json_atomic(tmp / CALIBRATION_FILE, calibration)
        write_text_atomic(tmp / "model_card.md", model_card(package, calibration, test_report, ious, data=data, mlflow=mlflow))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
