"""Benchmark the metric library against scikit-learn and pycocotools on synthetic maps.

    .venv/bin/python benchmarks/bench_metrics.py --tiles 1000 --sklearn-tiles 200 --coco-tiles 1000

Times the full metric set of :class:`rts.metrics.EvalAccumulator` (pixel curves at 3 ratios,
object counts at 3 IoUs x 100 thresholds x 3 ratios, AP@0.5/0.3, size classes, regions) on
synthetic 512 px probability maps, against (a) scikit-learn ``average_precision_score`` on the
same pixels at the same 3 ratios and (b) pycocotools COCOeval for AP@0.5 alone. The anchor is
(a) + (b), each measured on its own subset in the same run and scaled linearly to ``--tiles``
(scikit-learn's time and memory grow linearly with the pixels); the printed ratio is anchor /
ours. Tile generation is excluded from every timing, and so is the numba compilation (or cache
load) of the first call, which is timed on its own (``numba_first_call_s``). Peak memory is the
tracemalloc peak of the accumulator pass (numpy reports its buffers to tracemalloc); it must not
grow with the number of tiles.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
import tracemalloc

import numpy as np
import torch
from scipy import ndimage as ndi

from rts.metrics import EvalAccumulator, coco_ap, gt_components, match_objects, pred_components

RATIOS = (200, 500, 1000)


def synthetic_tile(seed: int, size: int = 512, positive: bool = True, background_logit: float = -4.0) -> tuple[np.ndarray, np.ndarray]:
    """One (prob float32, label uint8) pair that looks like a segmentation model's output.

    Positive tiles hold 1-4 elliptic RTS (label 1) with a 3-pixel ignore rim; the probability map
    is a smooth background around ``sigmoid(background_logit)`` plus pixel noise, displaced bumps
    on the objects and 0-2 false-positive bumps elsewhere.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    label = np.zeros((size, size), np.uint8)
    logit = ndi.gaussian_filter(rng.normal(0, 1, (size, size)).astype(np.float32), 8) * 20 + background_logit
    for _ in range(int(rng.integers(1, 5)) if positive else 0):
        cy, cx = rng.integers(40, size - 40, 2)
        ry, rx = rng.integers(10, 60, 2)
        label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        dy, dx = rng.integers(-8, 9, 2)
        logit += 9 * np.exp(-(((yy - cy - dy) / ry) ** 2 + ((xx - cx - dx) / rx) ** 2))
    for _ in range(int(rng.integers(0, 3))):
        cy, cx = rng.integers(0, size, 2)
        r = float(rng.integers(5, 30))
        logit += rng.uniform(3, 11) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
    if positive:
        obj = label == 1
        label[ndi.binary_dilation(obj, iterations=3) & ~ndi.binary_erosion(obj, iterations=3)] = 255
    logit += rng.normal(0, 0.5, (size, size)).astype(np.float32)
    return (1 / (1 + np.exp(-logit))).astype(np.float32), label


def tiles(n: int, pos_every: int, background_logit: float):
    for i in range(n):
        pos = i % pos_every == 0
        yield (*synthetic_tile(i, positive=pos, background_logit=background_logit), pos, f"region{i % 3}")


def bench_ours(n: int, pos_every: int, bg: float, objects: bool = True, trace: bool = False) -> dict:
    """Time (or, with ``trace``, measure the memory of) the accumulator over ``n`` tiles."""
    acc = EvalAccumulator(objects=objects)
    spent, cpu, peak = 0.0, 0.0, 0
    if trace:  # tracemalloc slows numpy down a lot: a separate pass, never timed
        tracemalloc.start()
    for prob, label, pos, region in tiles(n, pos_every, bg):
        if trace:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        t, c = time.perf_counter(), time.process_time()
        acc.update(prob, label, positive_tile=pos, region=region)
        spent += time.perf_counter() - t
        cpu += time.process_time() - c
        if trace:
            peak = max(peak, tracemalloc.get_traced_memory()[1] - base)
    t, c = time.perf_counter(), time.process_time()
    res = acc.result(ratios=RATIOS)
    spent += time.perf_counter() - t
    cpu += time.process_time() - c
    if trace:
        tracemalloc.stop()
    state_mb = sum(v.nbytes for v in acc.state_dict().values() if isinstance(v, np.ndarray)) / 2**20
    return {"seconds": spent, "cpu_seconds": cpu, "peak_mb_per_update": peak / 2**20, "state_mb": state_mb, "result": res}


def bench_sklearn(n: int, pos_every: int, bg: float) -> dict:
    from sklearn.metrics import average_precision_score

    ys, ps, cls = [], [], []
    for prob, label, pos, _ in tiles(n, pos_every, bg):
        v = label != 255
        ys.append(label[v] == 1)
        ps.append(prob[v])
        cls.append(np.full(int(v.sum()), pos))
    tracemalloc.start()
    t, t_cpu = time.perf_counter(), time.process_time()
    y, p, c = np.concatenate(ys), np.concatenate(ps), np.concatenate(cls)
    n_pos = sum(i % pos_every == 0 for i in range(n))
    aps = {}
    for r in RATIOS:
        w = np.where(c, 1.0, r * n_pos / (n - n_pos))
        aps[r] = float(average_precision_score(y, p, sample_weight=w))
    spent, cpu = time.perf_counter() - t, time.process_time() - t_cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": spent, "cpu_seconds": cpu, "peak_mb": peak / 2**20, "pixel_mb": (p.nbytes + y.nbytes) / 2**20, "ap": aps}


def bench_coco(n: int, pos_every: int, bg: float) -> dict:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    spent, cpu = 0.0, 0.0
    images, anns, dets = [], [], []
    our_scores, our_matched, n_gt = [], [], 0
    for img_id, (prob, label, _, _) in enumerate(tiles(n, pos_every, bg), start=1):
        t, c = time.perf_counter(), time.process_time()
        pred = pred_components(prob, label, 0.5, min_object_px=200)
        gt = gt_components(label, min_object_px=200)
        images.append({"id": img_id, "height": label.shape[0], "width": label.shape[1]})
        for j in range(gt.n):
            rle = mask_utils.encode(np.asfortranarray(gt.mask(j).astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": 1, "segmentation": rle,
                         "area": float(gt.area[j]), "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0})
        for i in range(pred.n):
            # our IoU leaves out label-255 pixels: hand pycocotools the same masks
            rle = mask_utils.encode(np.asfortranarray((pred.mask(i) & (label != 255)).astype(np.uint8)))
            dets.append({"image_id": img_id, "category_id": 1, "segmentation": rle, "score": float(pred.score[i])})
        spent += time.perf_counter() - t
        cpu += time.process_time() - c
        _, _, _, pairs = match_objects(pred, gt, 0.5)  # our AP on the same components, untimed
        our_scores.append(pred.score)
        our_matched.append(np.isin(np.arange(pred.n), [i for i, _ in pairs]))
        n_gt += gt.n
    t, c = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "rts"}]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets) if dets else COCO(), iouType="segm")
        ev.params.maxDets = [10000]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.iouThrs = np.array([0.5])
        ev.evaluate()
        ev.accumulate()
    spent += time.perf_counter() - t
    cpu += time.process_time() - c
    ours = coco_ap(np.concatenate(our_scores), np.concatenate(our_matched), n_gt)
    return {"seconds": spent, "cpu_seconds": cpu, "ap50": float(ev.eval["precision"][0, :, 0, 0, 0].mean()), "ours_ap50": ours}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=1000)
    ap.add_argument("--sklearn-tiles", type=int, default=200)
    ap.add_argument("--coco-tiles", type=int, default=1000)
    ap.add_argument("--pos-every", type=int, default=10, help="every k-th tile is positive")
    ap.add_argument("--background-logit", type=float, default=-4.0, help="-4: p~0.02 background; -7: p~0.001")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"tiles": args.tiles, "background_logit": args.background_logit, "load_average_start": os.getloadavg()[0]}
    prob, label = synthetic_tile(0)
    t = time.perf_counter()
    EvalAccumulator().update(prob, label, positive_tile=True)  # compiles the kernels, or loads numba's cache
    out["numba_first_call_s"] = round(time.perf_counter() - t, 2)
    full = bench_ours(args.tiles, args.pos_every, args.background_logit)
    pix = bench_ours(args.tiles, args.pos_every, args.background_logit, objects=False)
    out["ours_full_s"] = round(full["seconds"], 2)
    out["ours_full_cpu_s"] = round(full["cpu_seconds"], 2)
    out["ours_full_ms_per_tile"] = round(1000 * full["seconds"] / args.tiles, 1)
    out["ours_pixel_only_s"] = round(pix["seconds"], 2)
    out["ours_state_mb"] = round(full["state_mb"], 2)
    out["ours_ap50_unweighted"] = full["result"]["unweighted"]["ap50"]
    out["ours_ap50_1to200"] = full["result"]["ratio_200"]["ap50"]
    out["ours_obj_iou0.3_precision_1to200"] = full["result"]["ratio_200"]["obj_iou0.3_precision"]
    out["ours_pr_auc_1to200"] = full["result"]["ratio_200"]["pr_auc"]
    for n_mem in (10, 40):
        out[f"ours_peak_mb_per_update_{n_mem}_tiles"] = round(bench_ours(n_mem, args.pos_every, args.background_logit, trace=True)["peak_mb_per_update"], 1)
    if args.sklearn_tiles:
        sk = bench_sklearn(args.sklearn_tiles, args.pos_every, args.background_logit)
        mine = bench_ours(args.sklearn_tiles, args.pos_every, args.background_logit, objects=False)["result"]
        out["sklearn_tiles"] = args.sklearn_tiles
        out["sklearn_s"] = round(sk["seconds"], 2)
        out["sklearn_cpu_s"] = round(sk["cpu_seconds"], 2)
        out["sklearn_peak_mb"] = round(sk["peak_mb"], 1)
        out["pr_auc_abs_diff_vs_sklearn"] = max(abs(mine[f"ratio_{r}"]["pr_auc"] - sk["ap"][r]) for r in RATIOS)
    if args.coco_tiles:
        co = bench_coco(args.coco_tiles, args.pos_every, args.background_logit)
        out["coco_tiles"] = args.coco_tiles
        out["coco_ap50_s"] = round(co["seconds"], 2)
        out["coco_ap50_cpu_s"] = round(co["cpu_seconds"], 2)
        out["coco_ap50"] = co["ap50"]
        out["ours_ap50_same_tiles"] = co["ours_ap50"]
    if args.sklearn_tiles and args.coco_tiles:
        anchor = sk["cpu_seconds"] * args.tiles / args.sklearn_tiles + co["cpu_seconds"] * args.tiles / args.coco_tiles
        out["anchor_s_scaled_to_tiles"] = round(anchor, 2)
        out["ours_full_vs_anchor_speedup"] = round(anchor / full["cpu_seconds"], 2)
    out["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
