"""The ``prepare`` stage's library function: check, split, normalisation statistics, summary.

Nothing is written unless every data check passes; every output is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rts.config import DataConfig, PrepareConfig
from rts.data.checks import check_dataset, format_report
from rts.data.normalization import compute_stats, save_stats, stats_hash
from rts.data.splits import SPLIT_NAMES, Manifest, resolve_splits
from rts.data.store import TileStore, io_workers, prefetch, unwritable
from rts.errors import DataError
from rts.io import IGNORE, tile_paths, write_json_atomic
from rts.logs import Progress, bar

log = logging.getLogger(__name__)


class DataCheckError(DataError, RuntimeError):
    """The dataset failed ``rts check``; the message is the full report."""


def run_checks(root: Path, store: TileStore | None = None) -> None:
    """Fail on any data problem. With ``store``, the tiles the checks decode also fill its cache, so
    the statistics and summary that follow do not decode them again."""
    problems = check_dataset(root, progress=True, workers=io_workers(), on_tile=store.put_decoded if store is not None else None)
    if problems:
        raise DataCheckError(f"{root}: {len(problems)} data problem(s); nothing was written:\n{format_report(problems)}")


class _Counted:
    """Ids to iterate any number of times (the statistics make two passes), advancing ``shown`` by one per id taken."""

    def __init__(self, ids: list[str], shown: Progress):
        self.ids, self.shown = ids, shown

    def __iter__(self):
        for tile_id in self.ids:
            yield tile_id
            self.shown.update()


def _label_counts(store: TileStore, tile_id: str) -> tuple[int, int, tuple[int, ...]]:
    """(RTS pixels, non-ignored pixels, shape) of one tile's label."""
    label = store.load(tile_id).label
    return int((label == 1).sum()), int((label != IGNORE).sum()), tuple(label.shape)


def split_summary(store: TileStore, manifests: dict[str, Manifest], tile_size: int | None = None) -> dict:
    """Tiles per split and class, RTS pixel fraction (of labelled, non-ignored pixels).

    Raises:
        DataError: with ``tile_size``, a tile of another size (training would fail mid-epoch in
            collate, evaluation at its first batch).
    """
    summary = {}
    with bar(sum(len(m.tiles) for m in manifests.values()), desc="split summary", unit="tile") as shown:
        for name, manifest in manifests.items():
            summary[name] = _summarise_split(store, manifest, tile_size, shown)
    return summary


def _summarise_split(store: TileStore, manifest: Manifest, tile_size: int | None, shown: Progress) -> dict:
    rts = valid = 0
    counts = prefetch(lambda rec: _label_counts(store, rec.tile_id), manifest.tiles, workers=io_workers())
    for rec, (tile_rts, tile_valid, shape) in zip(manifest.tiles, counts):
        shown.update()
        if tile_size is not None and shape != (tile_size, tile_size):
            raise DataError(f"{tile_paths(store.root, rec.tile_id)['label']}: {shape[-1]}x{shape[0]} px, but data.tile_size is "
                            f"{tile_size}; every tile must be {tile_size}x{tile_size} (set data.tile_size or rebuild the tile)")
        rts += tile_rts
        valid += tile_valid
    return {
        "n_tiles": len(manifest.tiles),
        "n_pos": manifest.n_pos,
        "n_neg": manifest.n_neg,
        "rts_pixel_fraction": rts / valid if valid else 0.0,
        "rts_pixels": rts,
        "valid_pixels": valid,
        **{f"negative_weight_1_{r}": w for r, w in manifest.negative_weights.items()},
    }


def prepare(
    data: DataConfig, cfg: PrepareConfig, *, seed: int, out_dir: Path, metrics_path: Path, cache_dir: Path | None
) -> dict:
    """Run the checks, write split manifests, statistics and the summary; return the summary."""
    root = Path(data.root)
    store = TileStore(root, cache_dir)
    run_checks(root, store)
    manifests = resolve_splits(root, val_balanced_ratio=cfg.val_balanced_ratio, realistic_ratios=cfg.realistic_ratios, seed=seed)
    for name in SPLIT_NAMES:
        if not manifests[name].tiles:
            raise DataCheckError(f"{root}: split {name} has no tiles; check splits.yaml")
    version = json.loads((root / "version.json").read_text()).get("dataset_version", "unknown")
    train_ids = [t.tile_id for t in manifests["train"].tiles]

    def load(tile_id: str):
        tile = store.load(tile_id)
        return tile.rgb, tile.extra

    log.info("normalisation statistics over %d training tiles", len(train_ids))
    with bar(2 * len(train_ids), desc="normalisation statistics (2 passes)", unit="tile") as shown:
        stats = compute_stats(
            _Counted(train_ids, shown),
            tile_loader=load,
            clip_percentiles=tuple(cfg.clip_percentiles),
            sample_px_per_tile=cfg.percentile_sample_px,
            seed=seed,
            dataset_version=version,
            workers=io_workers(),
        )
    summary = split_summary(store, manifests, tile_size=data.tile_size)
    train = summary["train"]
    summary["class_pixel_counts"] = {"background": train["valid_pixels"] - train["rts_pixels"], "rts": train["rts_pixels"]}
    summary["dataset_version"] = version
    summary["normalization_stats_sha256"] = stats_hash(stats)
    writes: list[tuple[str, Callable[[Path], object]]] = [
        *((f"splits/{name}.json", manifest.save) for name, manifest in manifests.items()),
        ("normalization_stats.json", lambda path: save_stats(path, stats)),
        ("summary.json", lambda path: write_json_atomic(path, summary)),
    ]
    _write_as_a_unit(Path(out_dir), writes)
    _named(metrics_path, lambda: write_json_atomic(metrics_path, {k: v for k, v in summary.items() if k in SPLIT_NAMES}))
    return summary


def _named(path: Path, write: Callable[[], object], kept: str = "") -> None:
    """Run ``write``; an OSError (a full disk) becomes one :class:`OutputError` line naming ``path`` and the fix."""
    try:
        write()
    except OSError as e:
        raise unwritable(path, e, "run prepare again", kept=kept) from e


def _write_as_a_unit(out_dir: Path, writes: list[tuple[str, Callable[[Path], object]]]) -> None:
    """Write every file into a staging folder beside ``out_dir`` first (where a full disk fails), then
    rename them into ``out_dir`` (renames need no space): a failure leaves ``out_dir`` as it was, with
    no empty ``splits/`` and no half of the files."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for rel, write in writes:
            _named(out_dir / rel, lambda: write(staging / rel), f"; {out_dir} was left as it was")
        for rel, _ in writes:
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, out_dir / rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
