"""The error gallery: pictures of the cases the object metrics count as errors.

At one threshold (evaluate: the operating threshold ``evaluate.threshold``), with the object rules
of :mod:`rts.metrics.objects` and the greedy matching at the primary IoU, exactly as
:class:`rts.metrics.EvalAccumulator` counts them:

* **false positives**: predicted components matched to no ground-truth object, the ``n_cases`` of
  highest prevalence-weighted cost first. Cost = score x tile weight, the weight of a negative tile
  being ``w_R = R |P| / |N|`` at the gallery's ratio (a false alarm on one of the many negative
  tiles stands for ``w_R`` of them at real prevalence) and 1 on a positive tile;
* **missed RTS**: ground-truth objects no prediction matched, per size class (small, medium,
  large), the largest first;
* **fragmented detections**: matched ground-truth objects that more than one predicted component
  touches, the most fragments first.

Each case is drawn as RGB and probability with its own object outlined in red and the label in
green, the probability panel also with every predicted component in yellow, titled with the tile id, region and score. The listing (``cases``) names the tile of
every case and counts every false positive per tile, so a test can hold it against the accumulator.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rts.io import PIXEL_SIZE_M, atomic_path
from rts.metrics import objects as obj

KINDS = ("false_positives", "missed", "fragmented")
LABEL_COLOUR = (0, 220, 0)
PRED_COLOUR = (255, 230, 0)
CASE_COLOUR = (255, 40, 40)
CROP_MIN_PX = 48


@dataclass
class Case:
    kind: str
    tile_id: str
    region: str | None
    score: float  # mean probability of the predicted component (missed: max probability over the object)
    cost: float
    area_px: int
    size_class: str | None = None
    n_fragments: int | None = None
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # row0, col0, row1, col1 of the crop in the tile
    crops: dict = field(default_factory=dict, repr=False)

    def listing(self) -> dict:
        out = {k: getattr(self, k) for k in ("tile_id", "region", "score", "cost", "area_px", "size_class", "n_fragments")}
        out["bbox"] = list(self.bbox)
        return {k: v for k, v in out.items() if v is not None}


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """A square box around ``mask``'s pixels with a margin, inside the tile."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = min(max(h, w), max(CROP_MIN_PX, int(1.6 * max(r1 - r0, c1 - c0))))
    cr, cc = (r0 + r1) // 2, (c0 + c1) // 2
    top = int(np.clip(cr - side // 2, 0, max(h - side, 0)))
    left = int(np.clip(cc - side // 2, 0, max(w - side, 0)))
    return top, left, min(top + side, h), min(left + side, w)


class Gallery:
    """Collects the worst cases of a split, one tile at a time (only the kept cases' crops are held).

    Args:
        threshold: binarisation threshold of the predicted components.
        iou: match IoU (the primary IoU of the metrics).
        min_object_px, merge_distance_px: the object rules of the accumulator.
        n_cases: cases kept per mosaic (per size class for missed RTS).
        negative_weight: ``w_R`` of a negative tile in the false-positive cost.
        ratio: the prevalence ratio of ``negative_weight`` (for the titles).
    """

    def __init__(self, *, threshold: float, iou: float, min_object_px: int, merge_distance_px: int = 0, n_cases: int = 8,
                 negative_weight: float = 1.0, ratio: int | None = None, pixel_size_m: float = PIXEL_SIZE_M):
        self.threshold, self.iou, self.min_object_px, self.merge_distance_px = threshold, iou, min_object_px, merge_distance_px
        self.n_cases, self.negative_weight, self.ratio, self.pixel_size_m = n_cases, negative_weight, ratio, pixel_size_m
        self._heaps: dict[str, list] = {"false_positives": [], "fragmented": [],
                                        **{f"missed/{c}": [] for c in obj.SIZE_CLASSES}}
        self._tie = itertools.count()
        self.fp_per_tile: dict[str, int] = {}
        self.totals = {"false_positives": 0, "missed": {c: 0 for c in obj.SIZE_CLASSES}, "fragmented": 0}

    def _keep(self, heap_name: str, key: float, case: Case, crops: Callable[[], dict]) -> None:
        heap = self._heaps[heap_name]
        item = (key, -next(self._tie), case)  # equal keys: the case seen first stays
        if len(heap) < self.n_cases:
            case.crops = crops()
            heapq.heappush(heap, item)
        elif item > heap[0]:
            case.crops = crops()
            heapq.heapreplace(heap, item)

    def add(self, tile_id: str, region: str | None, positive: bool, prob: np.ndarray, label: np.ndarray,
            rgb: Callable[[], np.ndarray]) -> None:
        """Add one tile; ``rgb()`` returns its (3, H, W) uint8 RGB (read only if a case is kept)."""
        prob = np.asarray(prob, np.float64)
        label = np.asarray(label)
        pred = obj.pred_components(prob, label, self.threshold, min_object_px=self.min_object_px,
                                   merge_distance_px=self.merge_distance_px)
        gt = obj.gt_components(label, min_object_px=self.min_object_px)
        inter = obj.intersections(pred, gt)
        iou = obj.iou_from_intersections(inter, pred.area, gt.area)
        pairs = obj.greedy_match(iou, obj.score_order(pred.score), self.iou)
        pred_hit = np.zeros(pred.n, bool)
        gt_hit = np.zeros(gt.n, bool)
        for i, j in pairs:
            pred_hit[i] = gt_hit[j] = True
        n_hits = (inter > 0).sum(axis=0)
        weight = 1.0 if positive else self.negative_weight
        cached: dict = {}

        def crops_of(mask: np.ndarray, box: tuple[int, int, int, int]) -> Callable[[], dict]:
            def make() -> dict:
                if "rgb" not in cached:
                    cached["rgb"] = np.asarray(rgb())
                r0, c0, r1, c1 = box
                return {"rgb": np.moveaxis(cached["rgb"][:, r0:r1, c0:c1], 0, -1).copy(), "prob": prob[r0:r1, c0:c1].astype(np.float32),
                        "label": (label[r0:r1, c0:c1] == 1), "pred": (prob[r0:r1, c0:c1] >= self.threshold), "object": mask[r0:r1, c0:c1]}
            return make

        n_fp = int((~pred_hit).sum())
        self.fp_per_tile[tile_id] = n_fp
        self.totals["false_positives"] += n_fp
        for i in np.flatnonzero(~pred_hit):
            m = pred.mask(int(i))
            box = _crop_box(m)
            case = Case("false_positives", tile_id, region, float(pred.score[i]), float(pred.score[i]) * weight, int(pred.size[i]), bbox=box)
            self._keep("false_positives", case.cost, case, crops_of(m, box))
        for j in range(gt.n):
            m = gt.mask(j)
            if not gt_hit[j]:
                cls = list(obj.SIZE_CLASSES)[obj.size_class(obj.max_diameter_m(m, self.pixel_size_m))]
                self.totals["missed"][cls] += 1
                box = _crop_box(m)
                case = Case("missed", tile_id, region, float(prob[m].max()), 1.0, int(gt.size[j]), size_class=cls, bbox=box)
                self._keep(f"missed/{cls}", float(gt.size[j]), case, crops_of(m, box))
            elif n_hits[j] > 1:
                self.totals["fragmented"] += 1
                touching = np.flatnonzero(inter[:, j] > 0)
                score = float(max(pred.score[touching]))
                box = _crop_box(m | np.isin(pred.labels, touching + 1))
                case = Case("fragmented", tile_id, region, score, 1.0, int(gt.size[j]), n_fragments=int(n_hits[j]), bbox=box)
                self._keep("fragmented", float(n_hits[j]) + gt.size[j] * 1e-9, case, crops_of(m, box))

    def cases(self, kind: str) -> list[Case]:
        """The kept cases of ``kind`` (missed: ``missed/<size class>``), worst first."""
        return [c for _, _, c in sorted(self._heaps[kind], reverse=True)]

    def listing(self) -> dict:
        """Settings, totals and the kept cases of every mosaic (JSON-able)."""
        return {
            "threshold": self.threshold, "iou": self.iou, "min_object_px": self.min_object_px, "n_cases": self.n_cases,
            "ratio": self.ratio, "negative_weight": self.negative_weight, "totals": self.totals,
            "false_positives_per_tile": {t: n for t, n in sorted(self.fp_per_tile.items()) if n},
            "false_positives": [c.listing() for c in self.cases("false_positives")],
            "missed": {cls: [c.listing() for c in self.cases(f"missed/{cls}")] for cls in obj.SIZE_CLASSES},
            "fragmented": [c.listing() for c in self.cases("fragmented")],
        }

    def write(self, out_dir: Path, name: str, title: str, *, note: str | None = None) -> dict[str, Path]:
        """The three mosaics as ``<out_dir>/<name>_<kind>.png``; returns them by kind. ``note``
        replaces the threshold in the titles (e.g. "no calibrated threshold at 1:500")."""
        ratio = f"1:{self.ratio}" if self.ratio else "as sampled"
        t = f"{title}, {note}" if note else f"{title}, threshold {self.threshold:.4g}, IoU {self.iou:g}"
        paths = {}
        paths["false_positives"] = _mosaic(
            {"": self.cases("false_positives")}, Path(out_dir) / f"{name}_false_positives.png",
            f"{t}: false positives by prevalence-weighted cost ({ratio}); {self.totals['false_positives']} in all", cost=True)
        paths["missed"] = _mosaic(
            {f"{cls} ({self.totals['missed'][cls]} missed)": self.cases(f"missed/{cls}") for cls in obj.SIZE_CLASSES},
            Path(out_dir) / f"{name}_missed.png", f"{t}: missed RTS by size class, largest first")
        paths["fragmented"] = _mosaic(
            {"": self.cases("fragmented")}, Path(out_dir) / f"{name}_fragmented.png",
            f"{t}: fragmented detections (one RTS, several predicted parts); {self.totals['fragmented']} in all")
        return paths


def _outlined(img: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    from scipy import ndimage as ndi

    out = img.copy()
    for m, colour in masks:
        if m.any():
            edge = m & ~ndi.binary_erosion(m, border_value=0)
            out[edge] = colour
    return out


def _mosaic(rows: dict[str, list[Case]], png: Path, title: str, *, cost: bool = False, per_row: int = 4) -> Path:
    """One PNG: per case an RGB and a probability panel with label and prediction outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: list[tuple[str, list[Case]]] = []
    for name, cases in rows.items():
        chunks = [cases[i : i + per_row] for i in range(0, len(cases), per_row)] or [[]]
        lines += [(name if k == 0 else "", chunk) for k, chunk in enumerate(chunks)]
    fig, axes = plt.subplots(len(lines), 2 * per_row, figsize=(2 * per_row * 1.45, len(lines) * 2.0 + 0.6), squeeze=False)
    cmap = matplotlib.colormaps["magma"]
    for r, (name, cases) in enumerate(lines):
        for ax in axes[r]:
            ax.set_axis_off()
        if name:
            axes[r][0].text(-0.08, 0.5, name, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center", fontsize=7)
        if not cases:
            axes[r][0].text(0.0, 0.5, "none", transform=axes[r][0].transAxes, fontsize=8, va="center")
        for k, c in enumerate(cases):
            cr = c.crops
            # RGB stays readable under a noisy prediction: label and the case only; probability: every component
            rgb = _outlined(cr["rgb"].astype(np.uint8), [(cr["label"], LABEL_COLOUR), (cr["object"], CASE_COLOUR)])
            prob = _outlined((cmap(np.clip(cr["prob"], 0, 1))[..., :3] * 255).astype(np.uint8),
                             [(cr["label"], LABEL_COLOUR), (cr["pred"], PRED_COLOUR), (cr["object"], CASE_COLOUR)])
            a, b = axes[r][2 * k], axes[r][2 * k + 1]
            a.imshow(rgb, interpolation="nearest")
            b.imshow(prob, interpolation="nearest")
            extra = f" cost {c.cost:.3g}" if cost else (f" {c.n_fragments} parts" if c.n_fragments else f" {c.area_px} px")
            a.set_title(f"{c.tile_id}\n{c.region or '-'}\np={c.score:.3f}{extra}", fontsize=6, loc="left")
    fig.suptitle(title + "\nRGB | probability; outlines: red the case's object, green label, yellow predicted components "
                 "(probability panel)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if len(lines) > 2 else 0.9))
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return png


def gallery_ratio(ratios: list[int]) -> int:
    """The prevalence ratio of the false-positive cost: the middle one of ``evaluate.ratios``."""
    s = sorted(ratios)
    return s[(len(s) - 1) // 2]

