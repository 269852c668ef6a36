"""Resolve region-level splits into tile manifests by region (spatial blocking), and the realistic prevalence weights.

``splits.yaml`` names Arctic regions per split; tiles are resolved through ``metadata.csv``'s
``RegionName``. Four manifests come out of one dataset:

- ``train``: every tile of the train regions (the sampler sets the epoch ratio);
- ``val_balanced``: all val positives plus a seeded sample of val negatives at 1:``val_balanced_ratio``;
- ``val_realistic`` and ``test_realistic``: all positives and all negatives of their regions. They
  are evaluated at 1:R by counting every negative tile with ``negative_weight = R * |P| / |N|``
  (recorded per ratio in the manifest), so one inference pass serves every ratio.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from rts.errors import DataError
from rts.io import (
    METADATA_COLUMNS,
    NEGATIVE,
    POSITIVE,
    read_json_or_none,
    utf8_problem,
    write_json_atomic,
)
from rts.prevalence import negative_weight

SPLIT_NAMES = ("train", "val_balanced", "val_realistic", "test_realistic")


@dataclass(frozen=True)
class TileRecord:
    tile_id: str
    positive: bool
    region: str


@dataclass
class Manifest:
    """The tiles of one split and, for realistic splits, the negative weight per ratio."""

    name: str
    tiles: list[TileRecord]
    negative_weights: dict[str, float] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return sum(t.positive for t in self.tiles)

    @property
    def n_neg(self) -> int:
        return len(self.tiles) - self.n_pos

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "negative_weights": self.negative_weights,
            "tiles": [asdict(t) for t in self.tiles],
        }

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        return cls(obj["name"], [TileRecord(**t) for t in obj["tiles"]], obj.get("negative_weights", {}))

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Manifest:
        obj = read_json_or_none(path)
        if obj is None:
            raise DataError(f"{path}: split manifest not found; run `dvc repro prepare` first")
        return cls.from_json(obj)


def read_metadata(root: Path) -> list[dict[str, str]]:
    """The rows of ``metadata.csv`` as the data checks read them: column names and values stripped
    of surrounding spaces, blank rows (a line of only commas) skipped. The checks passed files that
    this reader then crashed on when the two disagreed."""
    path = root / "metadata.csv"
    not_utf8 = utf8_problem(path)
    if not_utf8 is not None:
        raise DataError(f"{path}: {not_utf8}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [c.strip() for c in next(reader, [])]
        return [dict(zip(header, (v.strip() for v in row))) for row in reader if any(v.strip() for v in row)]


def read_splits(root: Path) -> dict[str, list[str]]:
    splits = yaml.safe_load((root / "splits.yaml").read_text()) or {}
    return {k: list(splits.get(k) or []) for k in ("train", "val", "test")}


def resolve_splits(
    root: Path, *, val_balanced_ratio: int, realistic_ratios: list[int], seed: int
) -> dict[str, Manifest]:
    """Build the four manifests. The dataset is assumed checked (``rts check``) already."""
    rows = read_metadata(root)
    missing = [c for c in METADATA_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise DataError(f"{root / 'metadata.csv'}: missing columns {missing}")
    region_split: dict[str, str] = {}
    for split, regions in read_splits(root).items():
        for region in dict.fromkeys(regions):  # listed twice in one split: a warning of the checks, once here
            if region in region_split:
                raise DataError(f"{root / 'splits.yaml'}: region {region!r} is in both {region_split[region]} and {split}")
            region_split[region] = split
    by_split: dict[str, list[TileRecord]] = {"train": [], "val": [], "test": []}
    for row in sorted(rows, key=lambda r: r["tile_id"]):
        cls = row["TrainClass"]
        if cls not in (POSITIVE, NEGATIVE):
            raise DataError(f"{root / 'metadata.csv'}: tile {row['tile_id']}: TrainClass {cls!r} is not Positive/Negative")
        split = region_split.get(row["RegionName"])
        if split is None:
            raise DataError(f"{root / 'metadata.csv'}: region {row['RegionName']!r} of tile {row['tile_id']} is in no split")
        by_split[split].append(TileRecord(row["tile_id"], cls == POSITIVE, row["RegionName"]))

    val = by_split["val"]
    val_pos = [t for t in val if t.positive]
    val_neg = [t for t in val if not t.positive]
    rng = np.random.default_rng(seed)
    n_bal = min(len(val_neg), val_balanced_ratio * len(val_pos))
    chosen = sorted(rng.choice(len(val_neg), size=n_bal, replace=False).tolist()) if n_bal else []
    val_balanced = val_pos + [val_neg[i] for i in chosen]

    def realistic(name: str, tiles: list[TileRecord]) -> Manifest:
        n_pos = sum(t.positive for t in tiles)
        n_neg = len(tiles) - n_pos
        weights = {str(r): negative_weight(r, n_pos, n_neg) for r in realistic_ratios}
        return Manifest(name, tiles, weights)

    return {
        "train": Manifest("train", by_split["train"]),
        "val_balanced": Manifest("val_balanced", sorted(val_balanced, key=lambda t: t.tile_id)),
        "val_realistic": realistic("val_realistic", val),
        "test_realistic": realistic("test_realistic", by_split["test"]),
    }
