"""Mosaic one block of neighbouring test tiles of a synth dataset into a scene for `rts predict`.

``rts synth`` renders each region in blocks of neighbouring tiles, so the kept tiles of one block
form a seamless piece of landscape. This writes that block as one scene: ``OUT/PLANET-RGB.tif``,
``OUT/EXTRA.tif`` and ``OUT/labels.tif`` (tiles not kept by the generator are nodata, 0 and 255),
so that ``rts predict ... --labels OUT/labels.tif`` reports the recall of the RTS the generator placed.

Usage:
    .venv/bin/python scripts/demo_scene.py data OUT [--split test] [--block 0]
    rts predict --model models/rts-model --out pred OUT/PLANET-RGB.tif --extra OUT/EXTRA.tif \
        --labels OUT/labels.tif --ratio 200 --tta none
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import rasterio
import yaml
from rasterio.merge import merge

from rts.authoring.synth import block_period
from rts.io import tile_paths, write_geotiff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="a dataset written by `rts synth`")
    p.add_argument("out", type=Path)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--block", type=int, default=0, help="index among the split's blocks, most positive tiles first")
    args = p.parse_args(argv)

    period = block_period(json.loads((args.data / "version.json").read_text())["options"]["tile_size"])
    regions = set(yaml.safe_load((args.data / "splits.yaml").read_text())[args.split])
    rows = [r for r in csv.DictReader(open(args.data / "metadata.csv", newline="")) if r["RegionName"] in regions]
    blocks: dict[tuple[str, int, int], list[dict]] = defaultdict(list)
    for r in rows:
        prefix, row, col = r["tile_id"].rsplit("_", 2)
        blocks[(prefix, int(row) // period, int(col) // period)].append(r)
    if not blocks:
        sys.exit(f"{args.data}: no tiles in split {args.split!r}")
    order = sorted(blocks, key=lambda k: (-sum(r["TrainClass"] == "Positive" for r in blocks[k]), -len(blocks[k]), k))
    chosen = blocks[order[args.block]]
    ids = sorted(r["tile_id"] for r in chosen)
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, name, nodata in (("rgb", "PLANET-RGB.tif", 0), ("extra", "EXTRA.tif", None), ("label", "labels.tif", 255)):
        sources = [rasterio.open(tile_paths(args.data, t)[kind]) for t in ids]
        mosaic, transform = merge(sources, nodata=nodata)
        for s in sources:
            s.close()
        write_geotiff(args.out / name, mosaic, transform, nodata=nodata)
    n_pos = sum(r["TrainClass"] == "Positive" for r in chosen)
    print(f"{args.out}: block {order[args.block]} of {len(order)}, {len(ids)} tiles ({n_pos} positive), {mosaic.shape[1]} x {mosaic.shape[2]} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
