"""End-to-end ``rts predict`` throughput against the bare model forward (docs/inference.md).

Both sides use the same model, batch size and number of passes; the bare side runs the model
(with the same scales/TTA through ``Predictor.logits``) on tensors already in memory. The
end-to-end side is ``predict_scene``: windowed reads in DataLoader workers, merge into the
memmap accumulator, manifest, then the COG/GeoPackage writes (timed separately as ``finalize``).

``--scenes K`` (K >= 2) adds a run of ``rts predict`` (``run_predict``) over K scenes, with the
finalize step in line (``--finalize-workers 0``) and overlapped with the next scene's passes
(``--finalize-workers 1``): tiles/s over the whole run, package loading included.

    .venv/bin/python benchmarks/bench_predict.py --threads 1 --workers 1 --scenes 4
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from packages import write_package, write_scene  # noqa: E402

from rts.inference.predict import predict_batch, predict_scene, run_predict  # noqa: E402
from rts.inference.predictor import load_predictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile-size", type=int, default=128)
    ap.add_argument("--scene", type=int, default=640, help="scene side in px")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scenes", type=int, default=1, help="K >= 2: also time a K-scene run, finalize in line vs overlapped")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        pkg = write_package(tmp / "pkg", tile_size=args.tile_size)
        rng = np.random.default_rng(0)
        scene = write_scene(tmp / "scene.tif", rng.integers(0, 255, (3, args.scene, args.scene), dtype=np.uint8))
        predictor = load_predictor(pkg)
        T, S = args.tile_size, args.tile_size // 2
        n = (int(np.ceil((args.scene - T) / S)) + 1) ** 2
        x = torch.from_numpy(rng.uniform(0, 255, (args.batch_size, 3, T, T)).astype(np.float32))
        predict_batch(predictor, x)  # warm-up
        best_bare = best_e2e = best_fin = float("inf")
        for rep in range(args.repeats):
            t = time.perf_counter()
            for _ in range(int(np.ceil(n / args.batch_size))):
                predict_batch(predictor, x)
            best_bare = min(best_bare, time.perf_counter() - t)
            out = tmp / f"out{rep}"
            t = time.perf_counter()
            entry = predict_scene(predictor, scene, out, threshold=0.5, batch_size=args.batch_size, num_workers=args.workers)
            total = time.perf_counter() - t
            timing = entry.get("timing", {})
            best_e2e = min(best_e2e, timing.get("passes_s", total))
            best_fin = min(best_fin, timing.get("finalize_s", 0.0))
        bare, e2e = n / best_bare, n / best_e2e
        full = n / (best_e2e + best_fin)
        print("| passes | tile | batch | threads | workers | bare forward tiles/s | predict tiles/s (passes) | ratio "
              "| finalize s | predict tiles/s incl. finalize | ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {n} | {T} | {args.batch_size} | {args.threads} | {args.workers} | {bare:.1f} | {e2e:.1f} | {e2e / bare:.0%} "
              f"| {best_fin:.2f} | {full:.1f} | {full / bare:.0%} |")
        if args.scenes >= 2:
            scenes = []
            for k in range(args.scenes):
                scenes.append(str(write_scene(tmp / f"scene{k}.tif", rng.integers(0, 255, (3, args.scene, args.scene), dtype=np.uint8))))
            print(f"\n{args.scenes} scenes of {n} passes, whole `rts predict` run (package loading included):\n")
            print("| finalize workers | wall s | tiles/s | ratio to bare forward |")
            print("|---|---|---|---|")
            for workers in (0, 1):
                best = float("inf")
                for rep in range(args.repeats):
                    out = tmp / f"multi{workers}_{rep}"
                    run_log = run_predict(pkg, out, scenes=scenes, threshold=0.5, batch_size=args.batch_size,
                                          num_workers=args.workers, finalize_workers=workers)
                    assert not run_log["errors"], run_log["errors"]
                    best = min(best, run_log["wall_time_s"])
                    shutil.rmtree(out)
                rate = n * args.scenes / best
                print(f"| {workers} | {best:.1f} | {rate:.1f} | {rate / bare:.0%} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
