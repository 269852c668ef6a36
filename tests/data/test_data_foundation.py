"""Splits, normalisation statistics, sampler, augmentation geometry, dataset channel selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from datasets import make_dataset  # noqa: E402

from rts.config import AugmentConfig, ConfigError, DataConfig, PrepareConfig, load_params  # noqa: E402
from rts.data.augment import Augmenter  # noqa: E402
from rts.data.boundary import boundary_band, soft_targets, valid_mask  # noqa: E402
from rts.data.dataset import TileDataset  # noqa: E402
from rts.data.normalization import Normalizer, compute_stats  # noqa: E402
from rts.data.sampler import BalancedBatchSampler, RandomBatchSampler, curriculum_ratio  # noqa: E402
from rts.data.splits import resolve_splits  # noqa: E402
from rts.prevalence import negative_weight  # noqa: E402
from rts.data.store import TileStore, prefetch  # noqa: E402
from rts.io import EXTRA_CHANNELS  # noqa: E402
from workdir import REPO



@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    return make_dataset(root, regions={"alpha": (4, 6), "bravo": (3, 9), "charlie": (2, 5)},
                        splits={"train": ["alpha"], "val": ["bravo"], "test": ["charlie"]})


# ------------------------------------------------------------------ params


def test_params_yaml_loads_into_dataclasses():
    p = load_params(REPO / "params.yaml")
    assert p.model.arch == "unetplusplus" and p.model.encoder == "efficientnet-b7"
    assert p.loss == "focal" and p.focal.gamma == 2.0 and p.focal.alpha == 0.25
    assert p.train.batch_size == 32 and p.train.max_epochs == 300 and p.train.ema_decay == 0.999


@pytest.mark.parametrize(
    "override, key",
    [
        ({"model.arch": "transformer9000"}, "model.arch"),
        ({"optim.lr": -1e-3}, "optim.lr"),
        ({"focal.alpha": 1.5}, "focal.alpha"),
        ({"data.extra_channels": ["ndvi", "thermal"]}, "data.extra_channels"),
        ({"train.batch_size": 5}, "train.batch_size"),
        ({"train.nonsense": 1}, "train.nonsense"),
        ({"loss": "dice"}, "loss"),
    ],
)
def test_bad_params_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", overrides=override)
    assert key in str(err.value)


def test_invalid_choice_lists_valid_choices():
    with pytest.raises(ConfigError, match="unetplusplus"):
        load_params(REPO / "params.yaml", overrides={"model.arch": "nope"})


# ------------------------------------------------------------------ splits


def test_splits_resolve_by_region_with_negative_weights(dataset_root):
    m = resolve_splits(dataset_root, val_balanced_ratio=1, realistic_ratios=[200, 1000], seed=0)
    assert {t.region for t in m["train"].tiles} == {"alpha"}
    assert (m["val_realistic"].n_pos, m["val_realistic"].n_neg) == (3, 9)
    assert (m["val_balanced"].n_pos, m["val_balanced"].n_neg) == (3, 3)
    assert set(m["val_balanced"].tiles) <= set(m["val_realistic"].tiles)
    assert m["val_realistic"].negative_weights["200"] == pytest.approx(200 * 3 / 9)
    assert m["test_realistic"].negative_weights["1000"] == pytest.approx(1000 * 2 / 5)
    assert negative_weight(200, 3, 9) == pytest.approx(66.6666666)


# ------------------------------------------------------------------ normalisation


def test_stats_match_two_pass_numpy(dataset_root):
    store = TileStore(dataset_root)
    ids = [f"alpha_{i:03d}" for i in range(10)]

    def load(tid):
        t = store.load(tid)
        return t.rgb, t.extra

    stats = compute_stats(ids, tile_loader=load, clip_percentiles=(1.0, 99.0), sample_px_per_tile=10**6,
                          dataset_version="2.0")
    assert stats["percentile_sample"]["exact"]
    allpx = np.concatenate([np.concatenate([load(t)[0].reshape(3, -1), load(t)[1].reshape(4, -1)]).astype(np.float64) for t in ids], axis=1)
    lo, hi = np.percentile(allpx, 1, axis=1), np.percentile(allpx, 99, axis=1)
    clipped = np.clip(allpx, lo[:, None], hi[:, None])
    mean = np.concatenate([stats["rgb"]["mean"], stats["extra"]["mean"]])
    std = np.concatenate([stats["rgb"]["std"], stats["extra"]["std"]])
    np.testing.assert_allclose(mean, clipped.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(std, clipped.std(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats["extra"]["clip_low"], lo[3:], rtol=1e-12)
    assert stats["n_tiles_used"] == 10 and stats["extra"]["channels"] == list(EXTRA_CHANNELS)


def test_reservoir_is_bounded_and_close(dataset_root):
    store = TileStore(dataset_root)
    ids = [f"alpha_{i:03d}" for i in range(10)]
    stats = compute_stats(ids, tile_loader=lambda t: (store.load(t).rgb, store.load(t).extra), clip_percentiles=(1.0, 99.0),
                          sample_px_per_tile=200, reservoir_capacity=1000, dataset_version="2.0")
    assert stats["percentile_sample"]["pixels"] == 1000 and not stats["percentile_sample"]["exact"]
    assert stats["rgb"]["clip_high"][0] == pytest.approx(200, abs=15)



def test_stats_do_not_depend_on_the_loader_threads(dataset_root, tmp_path):
    store = TileStore(dataset_root, tmp_path / "cache")  # the first pass also fills the cache, from threads
    ids = [f"alpha_{i:03d}" for i in range(10)]
    kw = dict(tile_loader=lambda t: (store.load(t).rgb, store.load(t).extra), clip_percentiles=(1.0, 99.0),
              sample_px_per_tile=200, reservoir_capacity=1000, dataset_version="2.0")
    one, four = compute_stats(ids, **kw), compute_stats(ids, workers=4, **kw)
    assert one == four


def test_prefetch_keeps_order_bounds_the_backlog_and_raises_at_the_item():
    import threading
    import time

    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.001 * (7 - i % 7))  # later items finish first
        if i == 15:
            raise ValueError(f"item {i} is bad")
        return i * i

    got = []
    with pytest.raises(ValueError, match="item 15 is bad"):
        for j, value in enumerate(prefetch(work, range(40), workers=3, depth=4)):
            got.append(value)
            time.sleep(0.01)  # a slow consumer: the producers must wait for it
            with lock:
                assert len(started) <= j + 1 + 4  # never more than depth results ahead
    assert got == [i * i for i in range(15)]
    assert list(prefetch(lambda i: -i, range(5), workers=1)) == [0, -1, -2, -3, -4]

# ------------------------------------------------------------------ sampler


def test_balanced_batches_have_exact_positive_share():
    pos, neg = list(range(10)), list(range(10, 210))
    s = BalancedBatchSampler(pos, neg, batch_size=8, pos_fraction=0.25, ratio=10, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == int(np.ceil(10 * 10 / 6))
    for b in batches:
        idx = [i for i, *_ in b]
        assert sum(i < 10 for i in idx) == 2 and len(idx) == 8
    negs = [i for b in batches for i, *_ in b if i >= 10]
    assert len(set(negs)) == len(negs) == 17 * 6 >= 100  # epoch ratio 1:10 (rounded up to whole batches), distinct


def test_sampler_is_deterministic_and_epoch_dependent():
    kw = dict(batch_size=4, pos_fraction=0.5, ratio=5, seed=7)
    a, b = BalancedBatchSampler(range(6), range(6, 60), **kw), BalancedBatchSampler(range(6), range(6, 60), **kw)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_ddp_shares_are_disjoint_and_complete():
    kw = dict(batch_size=4, pos_fraction=0.5, ratio=8, seed=1, world_size=2)
    r0 = BalancedBatchSampler(range(5), range(5, 100), rank=0, **kw)
    r1 = BalancedBatchSampler(range(5), range(5, 100), rank=1, **kw)
    assert len(r0) == len(r1)
    g = r0.global_epoch()
    for (b0, b1, gb) in zip(r0, r1, g):
        assert [i for i, *_ in b0] == gb[0].tolist() and [i for i, *_ in b1] == gb[1].tolist()
        n0 = [i for i, *_ in b0 if i >= 5]
        n1 = [i for i, *_ in b1 if i >= 5]
        assert not set(n0) & set(n1)
    neg_all = [i for b in g.reshape(-1, 4) for i in b if i >= 5]
    assert len(neg_all) == len(set(neg_all))


def test_curriculum_schedule():
    assert curriculum_ratio(0, start=1, end=50, epochs=11) == pytest.approx(1)
    assert curriculum_ratio(10, start=1, end=50, epochs=11) == pytest.approx(50)
    assert curriculum_ratio(5, start=1, end=50, epochs=11) == pytest.approx(np.sqrt(50))
    assert curriculum_ratio(99, start=1, end=50, epochs=11) == pytest.approx(50)
    s = BalancedBatchSampler(range(4), range(4, 400), batch_size=4, pos_fraction=0.5, ratio=1, curriculum=(1, 50, 11))
    lengths = []
    for e in (0, 5, 10):
        s.set_epoch(e)
        lengths.append(len(s))
    assert lengths == [2, int(np.ceil(np.sqrt(50) * 4 / 2)), 100]


def test_random_sampler_has_no_positive_quota():
    s = RandomBatchSampler(range(2), range(2, 1000), batch_size=8, ratio=100, seed=0)
    n_pos = [sum(i < 2 for i, *_ in b) for b in s]
    assert sum(n_pos) < len(n_pos)  # most batches have no positive at all


# ------------------------------------------------------------------ augmentation and dataset


def test_mask_follows_image_under_augmentation():
    rng = np.random.default_rng(0)
    label = np.zeros((96, 96), np.uint8)
    label[20:60, 30:80] = 1
    label[70:90, 10:25] = 255
    rgb = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    extra = np.stack([(label == 1).astype(np.float32), (label == 255).astype(np.float32)], axis=-1)
    aug = Augmenter(AugmentConfig(rotate90_p=1, hflip_p=0.5, vflip_p=0.5, affine_p=1, elastic_p=1, color_p=1))
    for seed in range(8):
        aug.seed(seed)
        stack, out = aug(rgb, extra, label)
        rts_img, ign_img = stack[..., 3], stack[..., 4]
        interior = (rts_img == 1.0) | ((rts_img == 0.0) & (ign_img == 0.0)) | (ign_img == 1.0)
        expect = np.where(ign_img == 1.0, 255, (rts_img == 1.0).astype(np.uint8))
        agree = (out[interior] == expect[interior]).mean()
        assert agree > 0.995, (seed, agree)
        assert set(np.unique(out)) <= {0, 1, 255}
        # colour jitter touched RGB only: EXTRA channels keep exact label values inside objects
        assert np.isin(np.unique(rts_img[interior]), [0.0, 1.0]).all()


def test_boundary_band_and_soft_targets():
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 1
    band = boundary_band(label, 2)
    assert band[5, 10] and band[3, 10] and band[6, 10] and not band[2, 10] and not band[10, 10]
    assert not valid_mask(np.full((4, 4), 255, np.uint8), 0).any()
    soft = soft_targets(label, 1.0)
    assert soft[10, 10] > 0.98 and soft[0, 0] < 0.01 and 0.3 < soft[5, 10] < 0.7


@pytest.mark.parametrize("channels", [[], ["ndvi"], ["sr", "ndvi"], list(EXTRA_CHANNELS)])
def test_dataset_selects_extra_channels_by_name(dataset_root, channels):
    m = resolve_splits(dataset_root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    store = TileStore(dataset_root)
    ids = [t.tile_id for t in m["train"].tiles]
    stats = compute_stats(ids, tile_loader=lambda t: (store.load(t).rgb, store.load(t).extra), clip_percentiles=(0.0, 100.0),
                          sample_px_per_tile=10**6, dataset_version="2.0")
    ds = TileDataset(store, m["train"].tiles, Normalizer(stats, channels), boundary_ignore_width=1)
    item = ds[0]
    assert item["image"].shape == (3 + len(channels), 32, 32)
    raw = store.load(m["train"].tiles[0].tile_id)
    for k, name in enumerate(channels):
        i = EXTRA_CHANNELS.index(name)
        expected = (raw.extra[i] - stats["extra"]["mean"][i]) / stats["extra"]["std"][i]
        np.testing.assert_allclose(item["image"][3 + k].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert item["target"].shape == item["valid"].shape == (1, 32, 32)
    assert item["positive"] is True and item["valid"].min() == 0  # boundary band ignored


def test_cache_serves_identical_values_and_notices_changes(dataset_root, tmp_path):
    plain = TileStore(dataset_root)
    cached = TileStore(dataset_root, tmp_path / "cache")
    a = cached.load("alpha_000")  # decodes and writes
    b = cached.load("alpha_000")  # memory-mapped from cache
    c = plain.load("alpha_000")
    for x in (a, b):
        np.testing.assert_array_equal(x.rgb, c.rgb)
        np.testing.assert_array_equal(x.extra, c.extra)
        np.testing.assert_array_equal(x.label, c.label)
    assert len(list((tmp_path / "cache").glob("alpha_000.*"))) == 2


def test_checks_fill_the_cache_with_what_decoding_gives_and_skip_bad_tiles(dataset_root, tmp_path):
    import shutil

    from rts.data.checks import check_dataset

    root = tmp_path / "ds"
    shutil.copytree(dataset_root, root)
    bad = root / "PLANET-RGB" / "bravo_001.tif"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: a problem, so no pixels are handed on
    store = TileStore(root, tmp_path / "cache")
    seen: list[str] = []

    def on_tile(tile_id, bands):
        seen.append(tile_id)
        store.put_decoded(tile_id, bands)

    problems = check_dataset(root, workers=3, on_tile=on_tile)
    assert [p.path for p in problems] == ["PLANET-RGB/bravo_001.tif"]
    ids = sorted(p.name[: -len(".tif")] for p in (root / "labels").glob("*.tif"))
    assert sorted(seen) == [i for i in ids if i != "bravo_001"] and len(seen) == len(ids) - 1
    assert not list((tmp_path / "cache").glob("bravo_001.*"))
    plain = TileStore(root)
    for tile_id in seen:
        assert len(list((tmp_path / "cache").glob(f"{tile_id}.*"))) == 2  # written by the checks
        cached, decoded = store.load(tile_id), plain.load(tile_id)
        for field in ("rgb", "extra", "label"):
            a, b = getattr(cached, field), getattr(decoded, field)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_multires_sample_reads_the_neighbourhood_and_keeps_ignore(tmp_path):
    from rts.data.windows import NeighbourWindows
    from rts.io import LABEL_DIR
    from rts.data.splits import TileRecord

    root = make_dataset(tmp_path / "ds", size=32, regions={"alpha": (3, 3)}, splits={"train": ["alpha"], "val": [], "test": []})
    # a 255 block of 2x2 px in tile 1: at scale 0.5 it must survive as ignore after downsampling
    import rasterio

    path = root / LABEL_DIR / "alpha_001.tif"
    with rasterio.open(path) as src:
        label, transform = src.read(), src.transform
    label[0, 0:2, 30:32] = 255
    from rts.io import write_geotiff

    write_geotiff(path, label, transform)
    store = TileStore(root)
    ids = [f"alpha_{i:03d}" for i in range(6)]
    stats = compute_stats(ids, tile_loader=lambda t: (store.load(t).rgb, store.load(t).extra), clip_percentiles=(0.0, 100.0),
                          sample_px_per_tile=10**6, dataset_version="2.0")
    ds = TileDataset(store, [TileRecord("alpha_002", False, "alpha")], Normalizer(stats, []),
                     windows=NeighbourWindows(store, ids, []))
    plain = ds[(0, 1, None, 1.0)]
    half = ds[(0, 1, None, 0.5)]
    assert half["image"].shape == plain["image"].shape == (3, 32, 32)
    assert not torch_equal(half["image"], plain["image"])
    # tile 2's 64 px window spans tiles 1..3; tile 1's ignore block sits at window x=16+30.. -> 8+15
    assert (half["label"].numpy() == 255).sum() >= 1
    crop = ds[(0, 1, 16, 1.0)]
    assert crop["image"].shape == (3, 16, 16) and crop["label"].shape == (16, 16)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_progressive_crop_schedule():
    from rts.training.loop import progressive_crop

    phases = [[256, 2], [384, 1]]
    assert [progressive_crop(phases, e, 512) for e in range(5)] == [256, 256, 384, None, None]
    assert progressive_crop([], 0, 512) is None


def test_prepare_fails_on_bad_data_and_writes_nothing(tmp_path):
    from rts.data.prepare import DataCheckError, prepare
    from rts.io import LABEL_DIR, write_geotiff

    root = make_dataset(tmp_path / "ds")
    import rasterio

    path = root / LABEL_DIR / "alpha_001.tif"
    with rasterio.open(path) as src:
        transform = src.transform
    write_geotiff(path, np.full((1, 32, 32), 7, np.uint8), transform)  # label value 7
    out, metrics = tmp_path / "prepared", tmp_path / "metrics" / "prepare.json"
    with pytest.raises(DataCheckError, match="alpha_001"):
        prepare(DataConfig(root=str(root), tile_size=32), PrepareConfig(), seed=0, out_dir=out, metrics_path=metrics, cache_dir=None)
    assert not out.exists() and not metrics.exists()


def test_prepare_writes_manifests_stats_and_summary(dataset_root, tmp_path):
    from rts.data.prepare import prepare

    out, metrics = tmp_path / "prepared", tmp_path / "metrics.json"
    summary = prepare(DataConfig(root=str(dataset_root), tile_size=32), PrepareConfig(), seed=0, out_dir=out,
                      metrics_path=metrics, cache_dir=tmp_path / "cache")
    assert {p.name for p in (out / "splits").iterdir()} == {"train.json", "val_balanced.json", "val_realistic.json", "test_realistic.json"}
    stats = json.loads((out / "normalization_stats.json").read_text())
    assert stats["n_tiles_used"] == 10 and len(stats["extra"]["mean"]) == 4
    m = json.loads(metrics.read_text())
    assert m["val_realistic"]["n_neg"] == 9 and m["train"]["rts_pixel_fraction"] > 0
    assert summary["class_pixel_counts"]["rts"] > 0


def test_prepare_writes_the_same_bytes_on_every_run(dataset_root, tmp_path):
    """A re-run of prepare on the same data and params must not change one byte of ``prepared/``:
    DVC would otherwise call train, evaluate and calibrate stale, and resume would discard the
    checkpoints as trained on "different statistics"."""
    import time

    from rts.data.normalization import dated, stats_hash
    from rts.data.prepare import prepare

    def run(name: str) -> dict[str, bytes]:
        out = tmp_path / name
        prepare(DataConfig(root=str(dataset_root), tile_size=32), PrepareConfig(), seed=0, out_dir=out,
                metrics_path=tmp_path / f"{name}.json", cache_dir=None)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    first = run("a")
    time.sleep(1.1)  # a wall-clock second later: a timestamp in the content would show
    assert run("b") == first
    stats = json.loads(first["normalization_stats.json"])
    assert "computed_date" not in stats
    assert stats_hash(dated(stats)) == stats_hash(stats), "the model's dated copy keeps the recorded hash"


def test_stray_spaces_and_blank_rows_read_the_same_in_the_checks_and_prepare(tmp_path):
    """`rts check` strips values and skips blank rows; the split reader did neither, so prepare
    crashed with a traceback on files the check had passed."""
    from rts.data.checks import check_dataset
    from rts.data.prepare import prepare

    root = make_dataset(tmp_path / "ds", size=32, regions={"alpha": (2, 2), "bravo": (2, 2), "charlie": (2, 2)})
    clean = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    path = root / "metadata.csv"
    lines = path.read_text().splitlines()
    spaced = [lines[0]] + [",".join(f" {v} " for v in line.split(",")) for line in lines[1:]] + [",,,,,,"]
    path.write_text("\n".join(spaced) + "\n")
    assert not check_dataset(root)
    again = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    assert {k: [t.tile_id for t in m.tiles] for k, m in again.items()} == {k: [t.tile_id for t in m.tiles] for k, m in clean.items()}
    prepare(DataConfig(root=str(root), tile_size=32), PrepareConfig(), seed=0, out_dir=tmp_path / "prepared",
            metrics_path=tmp_path / "m.json", cache_dir=None)


def test_a_package_recorded_with_the_dated_hash_still_loads_its_statistics(tmp_path):
    """Packages trained before the date left the hash recorded the hash of the dated file; they
    must keep loading, and a real difference is still refused."""
    import hashlib

    from rts.data.normalization import load_stats
    from rts.errors import DataError
    from rts.io import write_json_atomic

    stats = {"dataset_version": "2.0", "computed_date": "2026-01-01T00:00:00+00:00", "n_tiles_used": 3}
    write_json_atomic(tmp_path / "s.json", stats)
    old_hash = hashlib.sha256(json.dumps(stats, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert load_stats(tmp_path / "s.json", expected_hash=old_hash) == stats
    with pytest.raises(DataError, match="does not match"):
        load_stats(tmp_path / "s.json", expected_hash="0" * 64)


def test_a_region_listed_twice_in_one_split_is_a_warning_in_the_checks_and_once_in_prepare(tmp_path):
    """The checks warned and passed; prepare then failed with "region in both train and train"."""
    from rts.data.checks import run_checks

    root = make_dataset(tmp_path / "ds", size=32, regions={"alpha": (2, 2), "bravo": (2, 2), "charlie": (2, 2)})
    clean = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    splits = yaml.safe_load((root / "splits.yaml").read_text())
    splits["train"] = splits["train"] * 2
    (root / "splits.yaml").write_text(yaml.safe_dump(splits))
    result = run_checks(root)
    assert result.ok and any("listed 2 times" in w.reason for w in result.warnings)
    again = resolve_splits(root, val_balanced_ratio=1, realistic_ratios=[200], seed=0)
    assert {k: [t.tile_id for t in m.tiles] for k, m in again.items()} == {k: [t.tile_id for t in m.tiles] for k, m in clean.items()}
