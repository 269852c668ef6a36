"""``rts review import``: verdicts back into numbers, an ARTS file and training data.

From a verdicts file saved by the review page (and the review folder it belongs to), writes into
``OUT``:

* ``precision.json``: the stratified precision estimate with intervals, per stratum, per region and
  overall (:mod:`rts.review.estimate`);
* ``summary.md``: the same as a short table, per region ("too few objects" where so);
* ``confirmed_rts.geojson``: the candidates marked RTS in the ARTS format (:mod:`rts.review.arts`);

and, with ``dataset``, adds the candidates marked "not RTS" to that dataset as hard-negative tiles
(:mod:`rts.review.negatives`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from rts.errors import ConfigError, DataError
from rts.io import write_json_atomic, write_text_atomic
from rts.review import arts
from rts.review.estimate import precision_report
from rts.review.export import CANDIDATES_FILE, FORMAT
from rts.review.page import VERDICTS, VERDICTS_FORMAT

log = logging.getLogger(__name__)


def read_review(review_dir: Path) -> dict:
    path = Path(review_dir) / CANDIDATES_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; pass --review DIR, the folder `rts review export` wrote")
    content = json.loads(path.read_text())
    if content.get("format") != FORMAT:
        raise DataError(f"{path}: format {content.get('format')!r}, expected {FORMAT!r}; export the review again")
    return content


def read_verdicts(path: Path, review: dict) -> dict[str, str]:
    """``{candidate id: verdict}`` from a verdicts file, checked against its review."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); pass the file the review page saved") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e}); save the verdicts from the review page again") from None
    if not isinstance(data, dict) or data.get("format") != VERDICTS_FORMAT:
        raise DataError(f"{path}: not a verdicts file (format {VERDICTS_FORMAT!r} expected); save it from review.html")
    if data.get("review_id") != review["review_id"]:
        raise DataError(f"{path}: verdicts of review {data.get('review_id')}, but --review holds review {review['review_id']}; "
                        "pass the review folder these verdicts were made in")
    known = set(review["order"])
    out: dict[str, str] = {}
    for i, entry in enumerate(data.get("verdicts") or []):
        cid, v = entry.get("id"), entry.get("verdict")
        if cid not in known:
            raise DataError(f"{path}: verdict {i} is for {cid!r}, which is not a candidate of this review")
        if v not in VERDICTS:
            raise DataError(f"{path}: verdict {i} ({cid}) is {v!r}; expected one of {', '.join(VERDICTS)}")
        out[cid] = v
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_markdown(review: dict, report: dict, verdicts: dict, confirmed: int, negatives: dict | None, arts_note: str) -> str:
    o = report["overall"]
    lines = [f"# Review {review['review_id']}", "",
             f"- Candidates: {len(review['candidates'])} in `{review['prediction_dir']}` at threshold {review['threshold']:g}"
             f" ({review.get('threshold_source') or 'unknown source'})",
             f"- Reviewed: {len(review['order'])} ({review['mode']}); verdicts: {len(verdicts)}"
             f" ({sum(v == 'rts' for v in verdicts.values())} RTS, {sum(v == 'not_rts' for v in verdicts.values())} not RTS,"
             f" {sum(v == 'unsure' for v in verdicts.values())} unsure)",
             f"- Estimate of: {report['population']}",
             f"- Estimator: {report['estimator']}; interval: {report['interval']}",
             f"- Confirmed RTS: {confirmed} ({arts_note})"]
    if negatives is not None:
        lines.append(f"- Hard negatives: {len(negatives['added'])} tiles added ({len(negatives['skipped'])} already there); "
                     f"dataset version `{negatives['dataset_version']}`")
    lines += ["", f"Overall precision: {_fmt(o['precision'])} [{_fmt(o['low'])}, {_fmt(o['high'])}]"
              + (f" ({o['note']})" if o.get("note") else ""), "",
              "Recall cannot be estimated from a review of detections (it never sees the RTS the model missed); the model "
              "card has per-region recall on the labelled test split.", "",
              "## Per region", "", "| region | candidates | decided | RTS | precision | 95% interval |", "|---|---|---|---|---|---|"]
    for region, e in report["regions"].items():
        if e.get("note"):
            lines.append(f"| {region} | {e['n_population']} | {e['n_decided']} | {e['n_confirmed']} | {e['note']} | - |")
        else:
            lines.append(f"| {region} | {e['n_population']} | {e['n_decided']} | {e['n_confirmed']} | {_fmt(e['precision'])} | "
                         f"[{_fmt(e['low'])}, {_fmt(e['high'])}] |")
    lines += ["", "## Per stratum of probability", "", "| stratum | candidates | decided | RTS | unsure | precision | Wilson 95% |",
              "|---|---|---|---|---|---|---|"]
    for h, e in report["strata"].items():
        lines.append(f"| {h} | {e['n_population']} | {e['n_decided']} | {e['n_confirmed']} | {e['n_unsure']} | "
                     f"{e.get('note') or _fmt(e['precision'])} | [{_fmt(e['low'])}, {_fmt(e['high'])}] |")
    return "\n".join(lines) + "\n"


def import_verdicts(verdicts_path: str | Path, review_dir: str | Path, out_dir: str | Path, *, dataset: str | Path | None = None,
                    arts_fields: str | Path | None = None, creator_lab: str | None = None, base_map_date: str | None = None,
                    contribution_date: str | None = None) -> dict:
    """Everything ``rts review import`` writes (see the module docstring); returns a summary dict."""
    review = read_review(Path(review_dir))
    verdicts = read_verdicts(Path(verdicts_path), review)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cands = review["candidates"]
    if review["mode"] == "top":  # the population is what was reviewed: nothing is known of the rest
        cands_for_estimate = [c for c in cands if c["selected"]]
    else:
        cands_for_estimate = cands
    report = precision_report(cands_for_estimate, verdicts, population_scope=review["population"])
    report["review_id"] = review["review_id"]
    write_json_atomic(out / "precision.json", report)

    meta = {**review.get("arts", {})}
    meta["creator_lab"] = creator_lab or meta.get("creator_lab")
    meta["base_map_date"] = base_map_date or meta.get("base_map_date")
    confirmed = [c for c in cands if verdicts.get(c["id"]) == "rts"]
    missing = [flag for flag, key in (("--creator-lab", "creator_lab"), ("--base-map-date", "base_map_date")) if not meta.get(key)]
    if confirmed and missing:
        raise ConfigError(f"{' and '.join(missing)}: required ARTS fields for the {len(confirmed)} confirmed RTS; pass them to "
                          "rts review import (or to rts review export)")
    today = contribution_date or dt.date.today().isoformat()
    features = [arts.feature(c["geometry"], lat=c["centroid_lat"], lon=c["centroid_lon"], region=c["region"],
                             creator_lab=meta["creator_lab"], base_map_date=meta["base_map_date"],
                             base_map_source=meta.get("base_map_source") or "PlanetScope",
                             base_map_resolution=float(meta.get("base_map_resolution") or 3), contribution_date=today,
                             area_m2=c["area_m2"], base_map_id=c["source"],
                             notes=f"rts review {review['review_id']}: model p={c['score']:.3f}")
                for c in confirmed]
    collection = arts.feature_collection(features)
    arts_note = "ARTS fields as in the built-in list"
    fields_path = Path(arts_fields) if arts_fields else None
    if fields_path is not None:
        if not fields_path.is_file():
            raise DataError(f"{fields_path}: ARTS field list not found; pass --arts-fields PATH/Metadata_Format_Summary.csv")
        problems = arts.validate(collection, arts.read_field_list(fields_path))
        if problems:
            raise DataError(f"confirmed_rts.geojson does not validate against {fields_path}: {problems[0]} "
                            f"({len(problems)} problem(s))")
        arts_note = f"validated against {fields_path}"
    write_text_atomic(out / "confirmed_rts.geojson", json.dumps(collection, indent=1) + "\n")

    negatives = None
    if dataset is not None:
        from rts.review.negatives import add_hard_negatives

        rejected = [c for c in cands if verdicts.get(c["id"]) == "not_rts"]
        negatives = add_hard_negatives(dataset, rejected, cands, review["sources"], review_id=review["review_id"])
    write_text_atomic(out / "summary.md", summary_markdown(review, report, verdicts, len(confirmed), negatives, arts_note))
    return {"verdicts": verdicts, "report": report, "confirmed": len(confirmed), "negatives": negatives, "out": str(out)}
