"""EvalAccumulator: hand-checked weighting, merge/state/batch equivalence, DDP with 2 gloo ranks."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rts.metrics import EvalAccumulator

SMALL = dict(object_thresholds=10, min_object_px=4)


def _tile(rng, pos, size=32):
    label = np.zeros((size, size), np.uint8)
    prob = rng.beta(1, 8, (size, size))
    if pos:
        r, c = rng.integers(2, size - 12, 2)
        label[r : r + 8, c : c + 9] = 1
        prob[r + 1 : r + 8, c : c + 9] = rng.uniform(0.5, 1.0)
    if rng.random() < 0.5:
        r, c = rng.integers(0, size - 6, 2)
        prob[r : r + 5, c : c + 5] = rng.uniform(0.4, 0.95)
    label[0, :] = 255
    return prob, label


def _tiles(seed, n=8):
    rng = np.random.default_rng(seed)
    return [(*_tile(rng, i % 3 == 0), i % 3 == 0, f"region{i % 2}") for i in range(n)]


def test_weights_at_1_to_200_by_hand():
    # 1 positive tile, 2 negative tiles -> w = 200 * 1 / 2 = 100
    acc = EvalAccumulator(min_object_px=2, object_thresholds=4)
    prob = np.zeros((6, 6))
    label = np.zeros((6, 6), np.uint8)
    prob[0:2, 0:2] = 0.9
    label[0:2, 0:2] = 1
    prob[4, 4:6] = 0.8  # 2-pixel false positive on the positive tile
    acc.update(prob, label, positive_tile=True)
    neg = np.zeros((6, 6))
    neg[0, 0:2] = 0.7  # 1 FP object, 2 FP pixels
    acc.update(neg, np.zeros((6, 6), np.uint8), positive_tile=False)
    acc.update(np.zeros((6, 6)), np.zeros((6, 6), np.uint8), positive_tile=False)
    r = acc.result(ratios=(200,))
    assert r["ratio_200"]["negative_weight"] == 100
    assert r["ratio_200"]["precision"] == pytest.approx(4 / (4 + 2 + 100 * 2))
    assert r["ratio_200"]["recall"] == 1.0
    assert r["ratio_200"]["iou_rts"] == pytest.approx(4 / 206)
    assert r["ratio_200"]["obj_iou0.3_precision"] == pytest.approx(1 / (1 + 1 + 100))
    assert r["ratio_200"]["obj_iou0.3_recall"] == 1.0
    assert r["unweighted"]["obj_iou0.3_precision"] == pytest.approx(1 / 3)
    assert r["unweighted"]["precision"] == pytest.approx(4 / 8)
    # AP@0.5 weighted: ranked 0.9 (TP), 0.8 (FP, w 1), 0.7 (FP, w 100): envelope 1 up to recall 1
    assert r["ratio_200"]["ap50"] == pytest.approx(1.0)
    _, tp, fp, fn = acc.object_counts(200, 0.3)
    # grid 0.25 0.5 0.75 1.0: FP 0.8 (weight 1) until 1.0, FP 0.7 (weight 100) until 0.75
    assert fp.tolist() == [101, 101, 1, 0]
    assert tp.tolist() == [1, 1, 1, 0] and fn.tolist() == [0, 0, 0, 1]


def test_all_ignore_tile_counts_nothing():
    acc = EvalAccumulator(**SMALL)
    acc.update(np.full((16, 16), 0.9), np.full((16, 16), 255, np.uint8), positive_tile=True)
    r = acc.result(ratios=(200,))
    assert r["n_pos_tiles"] == 1
    assert acc.pix_hist.sum() == 0 and acc.pix_op.sum() == 0
    assert r["unweighted"]["precision"] is None and r["unweighted"]["pr_auc"] is None
    assert r["unweighted"]["obj_iou0.3_precision"] is None  # the all-ignore blob is dropped
    json.dumps(r)  # JSON-able: NaN became None


def test_invalid_inputs_are_named():
    acc = EvalAccumulator(**SMALL)
    for bad in (1.5, -0.1, np.nan, np.inf, -np.inf):
        for dtype in (np.float64, np.float32):
            prob = np.full((4, 4), 0.5, dtype)
            prob[2, 3] = bad
            with pytest.raises(ValueError, match="in \\[0, 1\\]"):
                acc.update(prob, np.zeros((4, 4), np.uint8), positive_tile=True)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):  # on a pixel labelled 255 too
        acc.update(np.where(np.eye(4, dtype=bool), np.nan, 0.5), np.where(np.eye(4, dtype=bool), 255, 0).astype(np.uint8),
                   positive_tile=True)
    with pytest.raises(ValueError, match="label values"):
        acc.update(np.zeros((4, 4)), np.full((4, 4), 7, np.uint8), positive_tile=True)
    assert acc.n_tiles.sum() == 0 and acc.pix_hist.sum() == 0 and acc.pix_op.sum() == 0  # a refused tile adds nothing
    with pytest.raises(ValueError, match="IoU 0.7 was not accumulated"):
        acc.result(primary_iou=0.7)


def _filled(tiles, **kw):
    acc = EvalAccumulator(**SMALL, **kw)
    for prob, label, pos, region in tiles:
        acc.update(prob, label, positive_tile=pos, region=region)
    return acc


def test_merge_state_dict_and_batch_equal_single_pass():
    tiles = _tiles(0)
    single = _filled(tiles).result()
    a, b = _filled(tiles[:3]), _filled(tiles[3:])
    a.merge(b)
    assert a.result() == single
    c = EvalAccumulator(**SMALL)
    c.load_state_dict(_filled(tiles).state_dict())
    assert c.result() == single
    d = EvalAccumulator(**SMALL)
    d.update_batch(torch.tensor(np.stack([t[0] for t in tiles])), np.stack([t[1] for t in tiles]),
                   torch.tensor([t[2] for t in tiles]), [t[3] for t in tiles])
    assert d.result() == single
    assert set(single["regions"]) == {"region0", "region1"}
    with pytest.raises(ValueError, match="different configurations"):
        a.merge(EvalAccumulator(n_bins=10))


def test_curves_for_plots():
    acc = _filled(_tiles(1))
    pc = acc.pixel_curve(200)
    assert len(pc["threshold"]) <= 2000 and pc["threshold"] == sorted(pc["threshold"])
    oc = acc.object_curve(None, 0.3)
    assert len(oc["threshold"]) == 10


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        tiles = _tiles(0)[rank::world]
        acc = _filled(tiles, exact=True)
        acc.all_reduce()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(acc.result(), f)
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_ranks_equal_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = json.loads(json.dumps(_filled(_tiles(0), exact=True).result()))
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == single.keys()
        for key in single:
            if isinstance(single[key], dict) and "pr_auc" in single[key]:
                for m, v in single[key].items():
                    assert got[key][m] == (pytest.approx(v, abs=1e-12) if v is not None else None), (key, m)
            else:
                assert got[key] == single[key], key


@pytest.mark.parametrize("n_bins", [1, 7, 100, 10000])
@pytest.mark.parametrize("label_dtype", [np.uint8, np.int64])
def test_compiled_pixel_counts_equal_the_numpy_counts(n_bins, label_dtype):
    from rts.metrics.accumulator import _tile_pixel_counts, _tile_pixel_counts_reference

    rng = np.random.default_rng(n_bins)
    for threshold in (0.0, 0.3, 0.5, 1.0):
        edges = np.arange(n_bins + 1) / n_bins
        p = np.concatenate([rng.random(3000), edges, np.nextafter(edges, -1).clip(0, 1), np.nextafter(edges, 2).clip(0, 1),
                            [threshold, np.nextafter(threshold, -1) if threshold > 0 else 0.0]])
        label = rng.choice(np.array([0, 1, 255], label_dtype), p.size)
        p, label = p.reshape(1, -1), label.reshape(1, -1)
        got, ref = _tile_pixel_counts(p, label, n_bins, threshold), _tile_pixel_counts_reference(p, label, n_bins, threshold)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        # float32 maps (the model's output) are counted as they are, as if converted to float64
        p32 = np.concatenate([p.ravel(), edges.astype(np.float32), np.nextafter(edges.astype(np.float32), np.float32(-1)).clip(0, 1),
                              np.nextafter(edges.astype(np.float32), np.float32(2)).clip(0, 1)]).astype(np.float32).reshape(1, -1)
        label32 = rng.choice(np.array([0, 1, 255], label_dtype), p32.size).reshape(1, -1)
        got = _tile_pixel_counts(p32, label32, n_bins, threshold)
        ref = _tile_pixel_counts_reference(p32.astype(np.float64), label32, n_bins, threshold)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9])
def test_a_grid_of_the_operating_threshold_alone_equals_the_grid_pass(threshold):
    """Validation in training accumulates the grid [operating threshold] from the operating point's
    matching instead of the grid pass: the same counts as the grid pass and its reference."""
    from rts.metrics import grid_object_counts, grid_object_counts_reference

    acc = EvalAccumulator(operating_threshold=threshold, object_thresholds=[threshold], iou_thresholds=(0.1, 0.3, 0.5),
                          min_object_px=4)
    tiles = _tiles(11, n=24)
    grid = np.zeros_like(acc.obj_grid)
    for prob, label, pos, region in tiles:
        acc.update(prob, label, positive_tile=pos, region=region)
        fast = grid_object_counts(prob, label, acc.grid, acc.iou_thresholds, min_object_px=4)
        np.testing.assert_array_equal(fast, grid_object_counts_reference(prob, label, acc.grid, acc.iou_thresholds, min_object_px=4))
        grid[0 if pos else 1] += fast
    from rts.metrics.report import NEG, POS

    np.testing.assert_array_equal(acc.obj_grid[POS], grid[0])
    np.testing.assert_array_equal(acc.obj_grid[NEG], grid[1])
    assert acc.obj_grid.sum() > 0 and acc.obj_grid[..., 0].sum() > 0  # something matched
