"""``rts review export``: chips and an offline review page from a prediction folder.

Selection:

* ``top``: the ``n`` candidates with the highest calibrated probability (what to look at first; an
  estimate from it is the precision of those ``n`` only);
* ``sample``: up to ``n`` candidates drawn at random (seeded) from each stratum of probability, so
  the precision of *all* candidates can be estimated without bias (:mod:`rts.review.estimate`).

The review folder holds ``candidates.json`` (every candidate of the prediction folder with its
stratum, and which were selected), ``chips/<id>.png`` and ``review.html``, the page that needs
neither a network nor a server (see :mod:`rts.review.page`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from rts.errors import ConfigError
from rts.io import write_json_atomic, write_text_atomic
from rts.review import candidates as C
from rts.review.page import render_page

log = logging.getLogger(__name__)

CANDIDATES_FILE = "candidates.json"
PAGE_FILE = "review.html"
FORMAT = "rts-review/1"


def default_edges(threshold: float, n: int = 3) -> list[float]:
    """``n`` equal-width probability strata from the prediction threshold up to 1."""
    return [round(threshold + (1 - threshold) * i / n, 6) for i in range(n)]


def stratum_names(edges: Sequence[float]) -> list[str]:
    bounds = [*edges, 1.0]
    return [f"p{bounds[i]:.3f}-{bounds[i + 1]:.3f}" for i in range(len(edges))]


def assign_strata(scores: np.ndarray, edges: Sequence[float]) -> list[str]:
    """The stratum name of each score: stratum ``i`` is ``[edges[i], edges[i+1])`` (the last up to 1;
    scores under the first edge go to the first stratum)."""
    names = stratum_names(edges)
    idx = np.clip(np.searchsorted(np.asarray(edges), scores, side="right") - 1, 0, len(edges) - 1)
    return [names[i] for i in idx]


def select(cands: list[dict], *, mode: Literal["top", "sample"], n: int, seed: int) -> list[dict]:
    """The selected candidates, in review order (descending score)."""
    ranked = sorted(cands, key=lambda c: (-c["score"], c["id"]))
    if mode == "top":
        return ranked[:n]
    rng = np.random.default_rng(seed)
    chosen = []
    for h in sorted({c["stratum"] for c in cands}):
        members = [c for c in ranked if c["stratum"] == h]
        pick = rng.choice(len(members), size=min(n, len(members)), replace=False) if members else []
        chosen += [members[i] for i in sorted(pick)]
    return sorted(chosen, key=lambda c: (-c["score"], c["id"]))


def export(pred_dir: str | Path, review_dir: str | Path, *, mode: Literal["top", "sample"] = "top", n: int = 50,
           strata: Sequence[float] | None = None, seed: int = 0, creator_lab: str | None = None,
           base_map_date: str | None = None, base_map_source: str = "PlanetScope", region_name: str | None = None) -> dict:
    """Write the review folder; returns the content of ``candidates.json``."""
    pred_dir, review_dir = Path(pred_dir), Path(review_dir)
    if n < 1:
        raise ConfigError(f"-n {n}: must be >= 1 (candidates to review, per stratum with --sample)")
    run_log = C.read_run_log(pred_dir)
    threshold = float(run_log.get("threshold", 0.5))
    edges = sorted(strata) if strata else default_edges(threshold)
    if any(not 0 <= e < 1 for e in edges) or len(set(edges)) != len(edges):
        raise ConfigError(f"--strata {','.join(map(str, edges))}: distinct probabilities in [0, 1) expected")
    srcs = C.sources(pred_dir)
    cands = [c for s in srcs for c in C.read_candidates(s)]
    if region_name:
        for c in cands:
            c["region"] = region_name
    names = assign_strata(np.array([c["score"] for c in cands]), edges)
    for c, h in zip(cands, names):
        c["stratum"] = h
    chosen = select(cands, mode=mode, n=n, seed=seed)
    chosen_ids = {c["id"] for c in chosen}
    for c in cands:
        c["selected"] = c["id"] in chosen_ids
    from rasterio.windows import Window, transform as win_transform

    by_source = {s.name: s for s in srcs}
    (review_dir / "chips").mkdir(parents=True, exist_ok=True)
    for s in srcs:
        mine = [c for c in chosen if c["source"] == s.name]
        if not mine:
            continue
        with C.open_imagery(s) as im:
            for c in mine:
                size = C.chip_size(c["geometry"])
                row0, col0 = im.window_at(c["x"], c["y"], size)
                window = im.read(row0, col0, size)
                t = win_transform(Window(col0, row0, size, size), im.transform)
                edge = C.outline(C.polygon_mask([c["geometry"]], t, size))
                panels, labels = C.chip_panels(window, edge)
                c["chip"] = f"chips/{c['id']}.png"
                c["panels"] = labels
                C.save_png(review_dir / c["chip"], panels)
    review_id = hashlib.sha256(json.dumps(sorted((c["id"], c["stratum"], c["selected"]) for c in cands)).encode()).hexdigest()[:16]
    content = {
        "format": FORMAT, "review_id": review_id, "prediction_dir": str(pred_dir.resolve()), "mode": mode, "n": n, "seed": seed,
        "threshold": threshold, "threshold_source": run_log.get("threshold_source"), "strata_edges": edges,
        "population": ("every candidate of the prediction folder (stratified sample)" if mode == "sample"
                       else f"the {len(chosen)} highest-probability candidates only (not a sample of the rest)"),
        "arts": {"creator_lab": creator_lab, "base_map_date": base_map_date, "base_map_source": base_map_source,
                 "base_map_resolution": 3},
        "sources": {name: {"rgb": s.rgb, "extra": s.extra, "prob": s.prob, "polygons": s.polygons, "rgb_bands": list(s.rgb_bands)}
                    for name, s in by_source.items()},
        "strata": {h: {"n_population": names.count(h), "n_selected": sum(1 for c in chosen if c["stratum"] == h)}
                   for h in stratum_names(edges)},
        "candidates": cands,
        "order": [c["id"] for c in chosen],
    }
    write_json_atomic(review_dir / CANDIDATES_FILE, content)
    write_text_atomic(review_dir / PAGE_FILE, render_page(content))
    log.info("review: %d of %d candidates in %s (%s); open %s", len(chosen), len(cands), review_dir, mode, review_dir / PAGE_FILE)
    return content
