"""Contact sheet of a synthetic dataset: what each region, the partial rule and the hard negatives
look like. Reads only the dataset folder (its ``catalog`` in ``version.json`` names the tiles).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from rts.errors import DataError
from rts.io import atomic_path, read_raster, tile_paths

# Columns of one example: RGB, RGB with label overlay (red = 1, yellow = 255), NDVI, SR.
PANELS = ("RGB", "label", "NDVI", "SR")
EXAMPLES_PER_ROW = 3


def _rgb(rgb: np.ndarray) -> np.ndarray:
    img = rgb.transpose(1, 2, 0).astype(np.float32)
    # Per-image 1-99% stretch: previews only (training never normalises per image).
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    return np.clip((img - lo) / max(hi - lo, 1.0), 0, 1)


def _overlay(rgb: np.ndarray, label: np.ndarray) -> np.ndarray:
    img = rgb.copy()
    img[label == 1] = 0.45 * img[label == 1] + 0.55 * np.array([1.0, 0.1, 0.1])
    img[label == 255] = 0.45 * img[label == 255] + 0.55 * np.array([1.0, 0.9, 0.0])
    return img


def _read(root: Path, tile_id: str) -> dict[str, np.ndarray]:
    p = tile_paths(root, tile_id)
    return {"rgb": read_raster(p["rgb"]), "extra": read_raster(p["extra"]), "label": read_raster(p["label"])[0]}


def _mosaic(root: Path, tile_ids: list[str]) -> dict[str, np.ndarray]:
    """Neighbouring tiles (ids ``<region>_<row>_<col>``) pasted on their grid; gaps stay empty."""
    rc = [tuple(int(v) for v in t.rsplit("_", 2)[1:]) for t in tile_ids]
    r0, c0 = min(r for r, _ in rc), min(c for _, c in rc)
    r1, c1 = max(r for r, _ in rc), max(c for _, c in rc)
    first = _read(root, tile_ids[0])
    n = first["label"].shape[0]
    out = {
        "rgb": np.zeros((3, (r1 - r0 + 1) * n, (c1 - c0 + 1) * n), np.uint8),
        "extra": np.full((4, (r1 - r0 + 1) * n, (c1 - c0 + 1) * n), np.nan, np.float32),
        "label": np.zeros(((r1 - r0 + 1) * n, (c1 - c0 + 1) * n), np.uint8),
    }
    for tid, (r, c) in zip(tile_ids, rc):
        t = _read(root, tid)
        ys, xs = slice((r - r0) * n, (r - r0 + 1) * n), slice((c - c0) * n, (c - c0 + 1) * n)
        out["rgb"][:, ys, xs] = t["rgb"]
        out["extra"][:, ys, xs] = t["extra"]
        out["label"][ys, xs] = t["label"]
    return out


def _pick_examples(root: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    version = json.loads((root / "version.json").read_text())
    catalog = version.get("catalog")
    if catalog is None:
        raise DataError(f"{root / 'version.json'}: no 'catalog' (not written by rts synth); cannot choose preview tiles")
    with open(root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    examples: list[tuple[str, dict[str, np.ndarray]]] = []
    by_region: dict[str, list[dict]] = {}
    for row in rows:
        if row["TrainClass"] == "Positive":
            by_region.setdefault(row["RegionName"], []).append(row)
    for region, pos in sorted(by_region.items()):
        # The positive tile with the most RTS (by UID count) shows the region's style best.
        best = max(pos, key=lambda r: (len(r["UIDs"].split(",")), r["tile_id"]))
        examples.append((f"{region.split(',')[0]} (positive)", _read(root, best["tile_id"])))
    if catalog["edge_ignore_tiles"]:
        tid = catalog["edge_ignore_tiles"][0]
        examples.append(("edge rule: yellow = 255", _read(root, tid)))
    for kind, ids in catalog["hard_negatives"].items():
        if ids:
            examples.append((f"hard negative: {kind}", _read(root, ids[0])))
    if catalog["multi_tile_rts"]:
        ids = next(iter(catalog["multi_tile_rts"].values()))
        region = ids[0].rsplit("_", 2)[0]
        rows_cols = [tuple(int(v) for v in t.rsplit("_", 2)[1:]) for t in ids]
        # One tile of context around the tiles that hold label 1: the parts of the RTS whose tiles
        # were skipped (floor only, all 255) show as gaps.
        r0, c0 = min(r for r, _ in rows_cols) - 1, min(c for _, c in rows_cols) - 1
        r1, c1 = max(r for r, _ in rows_cols) + 1, max(c for _, c in rows_cols) + 1
        existing = {row["tile_id"] for row in rows}
        block = [f"{region}_{r:03d}_{c:03d}" for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
        examples.append((f"multi-tile RTS ({len(ids)} tiles)", _mosaic(root, [t for t in block if t in existing])))
    return examples


def write_preview(dataset_dir: Path, png: Path) -> None:
    """Write a contact sheet PNG of a synth dataset.

    One example per region (its richest positive tile), one edge tile with ignore (255) pixels,
    one negative tile per hard-negative kind and one multi-tile RTS mosaic; each example shows
    RGB, RGB with the label (red = 1, yellow = 255), NDVI and shaded relief.

    Args:
        dataset_dir: a folder written by :func:`rts.authoring.synth.synthesize`.
        png: output path (written atomically).

    Raises:
        DataError: the folder has no synth ``version.json`` catalog.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = _pick_examples(Path(dataset_dir))
    n_rows = -(-len(examples) // EXAMPLES_PER_ROW)
    n_cols = EXAMPLES_PER_ROW * len(PANELS)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 1.5, n_rows * 1.75), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (title, t) in enumerate(examples):
        row, col0 = divmod(i, EXAMPLES_PER_ROW)
        col0 *= len(PANELS)
        rgb = _rgb(t["rgb"])
        images = [
            (rgb, {}),
            (_overlay(rgb, t["label"]), {}),
            (t["extra"][0], {"cmap": "RdYlGn", "vmin": -0.2, "vmax": 0.8}),
            (t["extra"][3], {"cmap": "gray", "vmin": 0, "vmax": 255}),
        ]
        for j, (img, kw) in enumerate(images):
            ax = axes[row, col0 + j]
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_title(title if j == 0 else PANELS[j], fontsize=7, loc="left")
    fig.suptitle(f"{Path(dataset_dir).name}: RGB | label (red 1, yellow 255) | NDVI | shaded relief", fontsize=9)
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=72, format="png", metadata={"Software": None}, pil_kwargs={"optimize": True})
        tmp.chmod(0o644)  # a document for others to read, not a private temp file
    plt.close(fig)
