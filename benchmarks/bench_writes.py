"""Output-write throughput of ``rts predict`` in worker processes (``--write-processes``), in Mpx/s.

K finished regions (S x S px accumulators on disk, with RTS-like blobs so polygonising has work)
are written exactly as ``rts predict`` finishes a region (probability and mask COGs with
overviews, polygons, ``done.json``) by a pool of 1, then 2, ... write worker processes. Each
worker count writes fresh copies of the same accumulators; Mpx/s = K x S^2 / wall time.

    .venv/bin/python benchmarks/bench_writes.py --regions 4 --size 2048 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from rasterio.transform import from_origin

from rts.inference.predict import WORK_DIR, _finish_in_worker, write_pool
from rts.inference.scene import Region, Tile

ORIGIN = (-1915000.0, -489000.0)


def make_region(root: Path, name: str, size: int, seed: int) -> Region:
    rng = np.random.default_rng(seed)
    work = root / WORK_DIR / name
    work.mkdir(parents=True)
    prob = np.memmap(work / "prob.f32", dtype=np.float32, mode="w+", shape=(size, size))
    prob[:] = rng.random((size, size), dtype=np.float32) * 0.3
    for _ in range(size * size // 40000):  # ~100 blobs per 2048^2
        r, c, h, w = rng.integers(0, size - 40), rng.integers(0, size - 40), rng.integers(8, 40), rng.integers(8, 40)
        prob[r : r + h, c : c + w] = 0.6 + 0.4 * rng.random((h, w), dtype=np.float32)
    prob.flush()
    scale = np.memmap(work / "scale.u8", dtype=np.uint8, mode="w+", shape=(size, size))
    scale[:] = 1
    scale.flush()
    step = 256
    tiles = [Tile(f"{name}_r{r}_c{c}", r, c) for r in range(0, size, step) for c in range(0, size, step)]
    (work / "manifest.jsonl").write_text("".join(json.dumps({"tile": t.tile_id, "status": "ok", "max_prob": 1.0}) + "\n" for t in tiles))
    return Region(name=name, rgb="none", extra=None, row_off=0, col_off=0, height=size, width=size,
                  transform=from_origin(ORIGIN[0] + seed * size * 3.0, ORIGIN[1], 3.0, 3.0), source_shape=(size, size), tiles=tiles)


def run(workers: int, regions: int, size: int, root: Path, master: Path) -> float:
    out = root / f"w{workers}"
    shutil.copytree(master, out)
    regs = [_REGIONS[i] for i in range(regions)]  # their work folders are the copies under ``out``
    pred = SimpleNamespace(scales=(1.0,), tile_size=512)
    kw = dict(settings={}, threshold=0.5, blocksize=512, keep_work=False, min_object_px=1, iou=0.3, susceptibility=None)
    with write_pool(workers) as pool:
        pool.submit(int, 0).result()  # start the workers before the clock
        t0 = time.perf_counter()
        futures = [pool.submit(_finish_in_worker, pred, r, out, {"timing": {}, "tiles_processed": 0}, **kw) for r in regs]
        for f in futures:
            f.result()
        return time.perf_counter() - t0


_REGIONS: dict[int, Region] = {}  # the regions of the master accumulators, by index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_writes_"))
    try:
        master = root / "master"
        for i in range(args.regions):
            _REGIONS[i] = make_region(master, f"region{i}", args.size, i)
        mpx = args.regions * args.size**2 / 1e6
        rates = {}
        for w in args.workers:
            s = run(w, args.regions, args.size, root, master)
            rates[w] = mpx / s
            print(f"write workers {w}: {mpx:.1f} Mpx in {s:.2f} s = {rates[w]:.2f} Mpx/s", flush=True)
        base = rates[args.workers[0]]
        for w in args.workers[1:]:
            print(f"{w} vs {args.workers[0]} worker(s): {rates[w] / base:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
