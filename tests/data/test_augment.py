"""The augmenter (issue 18, P1): one folded map per sample for uint8 RGB, float32 EXTRA and the label.

What the change claims:
- rotate90 and flips are exact moves, equal to numpy's and to a warp by the folded matrix;
- one map moves RGB, EXTRA and the label alike, and the label warped is the label read at the
  warped coordinates (the geometric part commutes with the label);
- the draws follow the same distributions as the albumentations transforms they replace: the
  affine's scale, angle and shift, the elastic field's spread and correlation length, and the
  colour jitter's arithmetic;
- deterministic per seed, and no fill value zeroes a channel of a 7-channel sample.
"""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import pytest
from albumentations.augmentations.geometric import functional as fgeometric
from scipy import stats

from rts.config import AugmentConfig
from rts.data.augment import Augmenter, _move, _rot90_source

ALL_ON = AugmentConfig(rotate90_p=1, hflip_p=0.5, vflip_p=0.5, affine_p=1, elastic_p=1, color_p=1)
DEFAULT_MIX = AugmentConfig(affine_p=0.5, elastic_p=0.5, color_p=0.5)
AFFINE_ONLY = AugmentConfig(rotate90_p=0, hflip_p=0, vflip_p=0, affine_p=1, elastic_p=0, color_p=0)


def _sample(rng, size=64, n_extra=4):
    label = np.zeros((size, size), np.uint8)
    label[10:40, 20:50] = 1
    label[45:60, 5:20] = 255
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    extra = rng.normal(0, 1, (size, size, n_extra)).astype(np.float32)
    return rgb, extra, label


def _coords(size):
    xs, ys = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    return np.dstack([xs, ys])


@pytest.mark.parametrize("channels", [None, 1, 3, 4, 7])
def test_rot90_and_flips_are_exact_and_equal_the_folded_warp(channels):
    rng = np.random.default_rng(0)
    shape = (16, 16) if channels is None else (16, 16, channels)
    a = rng.integers(0, 256, shape).astype(np.uint8 if channels in (None, 3) else np.float32)
    for k in range(4):
        for hflip in (False, True):
            for vflip in (False, True):
                m, ref = _rot90_source(k, 16, 16), np.rot90(a, k)
                if hflip:
                    m, ref = m @ np.array([[-1.0, 0, 15], [0, 1, 0], [0, 0, 1]]), ref[:, ::-1]
                if vflip:
                    m, ref = m @ np.array([[1.0, 0, 0], [0, -1, 15], [0, 0, 1]]), ref[::-1]
                np.testing.assert_array_equal(_move(a, m), ref)
                warped = cv2.warpAffine(a, m[:2], (16, 16), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REFLECT_101)
                np.testing.assert_array_equal(warped.reshape(a.shape), ref)


@pytest.mark.parametrize("cfg", [ALL_ON, DEFAULT_MIX, AFFINE_ONLY], ids=["all-on", "default-mix", "affine-only"])
def test_one_map_moves_rgb_extra_and_label_alike(cfg):
    # EXTRA carries the pixel coordinates (bilinear is exact on a linear function), so after the
    # draw it holds each output pixel's source; the label must be the input label read there and
    # RGB (the same smooth picture as EXTRA's third channel) must follow the same map.
    size = 96
    label = np.zeros((size, size), np.uint8)
    label[20:60, 30:80] = 1
    label[70:90, 10:25] = 255
    smooth = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 256, (size, size)).astype(np.float32), (0, 0), 4)
    smooth = np.rint((smooth - smooth.min()) / np.ptp(smooth) * 255)
    rgb = np.repeat(smooth.astype(np.uint8)[..., None], 3, axis=-1)
    extra = np.dstack([_coords(size), smooth.astype(np.float32)])
    aug = Augmenter(AugmentConfig(**{**cfg.__dict__, "color_p": 0.0}))
    checked = 0
    for seed in range(16):
        aug.seed(seed)
        out_rgb, out_extra, out_label = aug.apply(rgb, extra, label)
        src = out_extra[..., :2]
        inside = ((src > 0.5) & (src < size - 1.5)).all(axis=-1)  # away from reflected borders
        sx, sy = np.rint(src[..., 0]).astype(int), np.rint(src[..., 1]).astype(int)
        read = label[np.clip(sy, 0, size - 1), np.clip(sx, 0, size - 1)]
        assert (out_label[inside] == read[inside]).mean() > 0.995, seed
        assert set(np.unique(out_label)) <= {0, 1, 255}
        assert np.abs(out_rgb[..., 0].astype(np.float32) - out_extra[..., 2])[inside].max() <= 1.0, seed
        checked += inside.sum()
    assert checked > 16 * size * size * 0.5


def _fitted_affine(src: np.ndarray, size: int) -> tuple[float, float, float, float]:
    """(scale, angle in degrees, shift x, shift y) of the forward map fitted to the source coordinates."""
    p = _coords(size).reshape(-1, 2)
    s = src.reshape(-1, 2)
    c = np.array([(size - 1) / 2, (size - 1) / 2])
    # output pixels whose source stays inside the tile for every draw (no reflected coordinates)
    keep = np.linalg.norm(p - c, axis=1) < size / 4
    design = np.c_[p[keep], np.ones(keep.sum())]
    coef, *_ = np.linalg.lstsq(design, s[keep], rcond=None)  # src = p @ A.T + b
    a, b = coef[:2].T, coef[2]
    fwd = np.linalg.inv(a)
    shift = fwd @ (c - b) - c
    return math.sqrt(abs(np.linalg.det(fwd))), math.degrees(math.atan2(fwd[1, 0], fwd[0, 0])), shift[0], shift[1]


def test_affine_draws_follow_albumentations_affine():
    size, n = 64, 150
    cfg = AFFINE_ONLY
    coords = _coords(size)
    alb = A.Compose([A.Affine(translate_percent=(-cfg.shift_limit, cfg.shift_limit), scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
                              rotate=(-cfg.rotate_limit, cfg.rotate_limit), interpolation=cv2.INTER_LINEAR,
                              border_mode=cv2.BORDER_REFLECT_101, p=1)], seed=7)
    ours, theirs = [], []
    aug = Augmenter(cfg)
    for seed in range(n):
        aug.seed(seed)
        _, out, _ = aug.apply(np.zeros((size, size, 3), np.uint8), coords, np.zeros((size, size), np.uint8))
        ours.append(_fitted_affine(out, size))
        theirs.append(_fitted_affine(alb(image=coords)["image"], size))
    ours, theirs = np.array(ours), np.array(theirs)
    for i, name in enumerate(["scale", "angle", "shift x", "shift y"]):
        assert stats.ks_2samp(ours[:, i], theirs[:, i]).pvalue > 0.01, name
    assert 1 - cfg.scale_limit - 1e-3 <= ours[:, 0].min() and ours[:, 0].max() <= 1 + cfg.scale_limit + 1e-3
    assert np.abs(ours[:, 1]).max() <= cfg.rotate_limit + 1e-3
    assert np.abs(ours[:, 2:]).max() <= cfg.shift_limit * size + 1e-2


def _autocorrelation(field: np.ndarray, lag: int) -> float:
    a, b = field[:, :-lag].ravel(), field[:, lag:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_elastic_field_follows_albumentations_field():
    size, n = 256, 32
    cfg = AugmentConfig()
    aug = Augmenter(cfg)
    rng = np.random.default_rng(0)
    ours = []
    for seed in range(n):
        aug.seed(seed)
        ours.append(aug._elastic(size, size))
    theirs = [np.stack(fgeometric.generate_displacement_fields((size, size), cfg.elastic_alpha, cfg.elastic_sigma, False, (17, 17),
                                                               rng, "gaussian"), axis=-1) for _ in range(n)]
    ours, theirs = np.stack(ours), np.stack(theirs)
    assert ours.shape == theirs.shape == (n, size, size, 2) and ours.dtype == np.float32
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.08)
    assert abs(ours.mean()) < 0.1 * ours.std()
    for lag in (1, 4, 8, 16):
        o = np.mean([_autocorrelation(f[..., axis], lag) for f in ours for axis in range(2)])
        t = np.mean([_autocorrelation(f[..., axis], lag) for f in theirs for axis in range(2)])
        assert abs(o - t) < 0.05, (lag, o, t)
    assert abs(np.corrcoef(ours[..., 0].ravel(), ours[..., 1].ravel())[0, 1]) < 0.05  # x and y drawn independently


def test_colour_jitter_is_albumentations_arithmetic_on_rgb_only():
    rng = np.random.default_rng(5)
    rgb, extra, label = _sample(rng)
    cfg = AugmentConfig(rotate90_p=0, hflip_p=0, vflip_p=0, affine_p=0, elastic_p=0, color_p=1)
    aug = Augmenter(cfg)
    jitter = A.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation, hue=0.0, p=1)
    for seed in range(10):
        aug.seed(seed)
        draw = np.random.default_rng(seed)
        draw.random()  # the colour's coin
        factors = [draw.uniform(1 - cfg.brightness, 1 + cfg.brightness), draw.uniform(1 - cfg.contrast, 1 + cfg.contrast),
                   draw.uniform(1 - cfg.saturation, 1 + cfg.saturation)]
        order = [int(i) for i in draw.permutation(3)] + [3]
        ref = jitter.apply(rgb.copy(), *factors, 0.0, order)
        out_rgb, out_extra, out_label = aug.apply(rgb, extra, label)
        np.testing.assert_array_equal(out_rgb, ref)
        np.testing.assert_array_equal(out_extra, extra)
        np.testing.assert_array_equal(out_label, label)


def test_call_is_apply_as_a_float32_stack():
    rng = np.random.default_rng(6)
    rgb, extra, label = _sample(rng)
    aug = Augmenter(ALL_ON)
    for seed in range(4):
        aug.seed(seed)
        stack, out = aug(rgb, extra, label)
        aug.seed(seed)
        r, e, lab = aug.apply(rgb, extra, label)
        assert stack.dtype == np.float32 and stack.shape == (64, 64, 7)
        np.testing.assert_array_equal(stack, np.concatenate([r.astype(np.float32), e], axis=-1))
        np.testing.assert_array_equal(out, lab)


def test_same_seed_same_sample_and_seeds_differ():
    rng = np.random.default_rng(1)
    rgb, extra, label = _sample(rng)
    aug = Augmenter(ALL_ON)
    outs = []
    for seed in (3, 3, 4):
        aug.seed(seed)
        outs.append(aug(rgb, extra, label))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][0], outs[2][0])


def test_rot90_and_flips_move_the_label_with_the_image_exactly():
    # without the interpolating transforms the label carried as an EXTRA channel must equal the mask
    rng = np.random.default_rng(2)
    rgb, _, label = _sample(rng)
    aug = Augmenter(AugmentConfig(rotate90_p=1, hflip_p=0.5, vflip_p=0.5, affine_p=0, elastic_p=0, color_p=0))
    moved = 0
    for seed in range(8):
        aug.seed(seed)
        stack, out = aug(rgb, label[..., None].astype(np.float32), label)
        np.testing.assert_array_equal(stack[..., 3], out.astype(np.float32))
        moved += not np.array_equal(out, label)
    assert moved  # the transforms did move it


@pytest.mark.parametrize("n_extra", [1, 2, 4])
def test_extra_channel_counts_keep_their_shape(n_extra):
    rng = np.random.default_rng(3)
    rgb, extra, label = _sample(rng, n_extra=n_extra)
    aug = Augmenter(ALL_ON)
    aug.seed(0)
    stack, out = aug(rgb, extra, label)
    assert stack.shape == (64, 64, 3 + n_extra) and out.shape == (64, 64)
    aug.seed(0)
    rgb_only, _ = aug(rgb, None, label)
    np.testing.assert_array_equal(rgb_only, stack[..., :3])


@pytest.mark.parametrize("cfg", [ALL_ON, AFFINE_ONLY], ids=["remap", "warp-affine"])
def test_seven_channels_no_border_or_fill_zeroes_a_channel(cfg):
    # The multi-channel pitfall: a border or fill value of 3 values on a 7-channel image leaves the
    # other channels at 0 where the warp leaves the tile. A constant tile zoomed out, shifted,
    # rotated and deformed must stay that constant in every channel (borders reflect).
    cfg = AugmentConfig(**{**cfg.__dict__, "shift_limit": 0.3, "scale_limit": 0.5, "color_p": 0.0})
    rgb = np.full((64, 64, 3), 200, np.uint8)
    extra = np.stack([np.full((64, 64), v, np.float32) for v in (1.5, -2.0, 3.25, 7.0)], axis=-1)
    label = np.ones((64, 64), np.uint8)
    aug = Augmenter(cfg)
    for seed in range(10):
        aug.seed(seed)
        stack, out = aug(rgb, extra, label)
        for c, v in enumerate([200, 200, 200, 1.5, -2.0, 3.25, 7.0]):
            np.testing.assert_allclose(stack[..., c], v, rtol=1e-6, err_msg=f"seed {seed} channel {c}")
        assert (out == 1).all()


# ------------------------------------------------------------------ the normaliser's table path


def _stats(n_extra=4):
    from rts.io import EXTRA_CHANNELS

    rng = np.random.default_rng(8)
    return {
        "rgb": {"clip_low": [10.0, 5.5, 0.0], "clip_high": [240.0, 250.25, 200.0], "mean": list(rng.uniform(60, 120, 3)),
                "std": list(rng.uniform(20, 50, 3))},
        "extra": {"channels": list(EXTRA_CHANNELS), "clip_low": list(rng.uniform(-3, -1, n_extra)),
                  "clip_high": list(rng.uniform(1, 3, n_extra)), "mean": list(rng.normal(0, 0.3, n_extra)),
                  "std": list(rng.uniform(0.5, 2, n_extra))},
    }


@pytest.mark.parametrize("extra_channels", [[], ["ndvi", "sr"], None], ids=["rgb", "two-extra", "all-extra"])
def test_normaliser_planes_equal_the_float32_stack_bit_for_bit(extra_channels):
    from rts.data.normalization import Normalizer
    from rts.io import EXTRA_CHANNELS

    names = list(EXTRA_CHANNELS) if extra_channels is None else extra_channels
    norm = Normalizer(_stats(), names)
    rng = np.random.default_rng(9)
    rgb = rng.integers(0, 256, (3, 40, 48), dtype=np.uint8)
    extra = rng.normal(0, 2, (len(names), 40, 48)).astype(np.float32)
    ref = norm(np.concatenate([rgb.astype(np.float32), extra], axis=0))
    got = norm.planes(rgb, extra if names else None, channels_last=False)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    got_hwc = norm.planes(np.moveaxis(rgb, 0, -1), np.moveaxis(extra, 0, -1) if names else None, channels_last=True)
    np.testing.assert_array_equal(got_hwc, ref)


def test_dataset_without_augmentation_gives_the_normalised_stack(tmp_path):
    # evaluation's samples are unchanged by the table path: the same bits as normalising the float32 stack
    from rts.authoring.synth import synthesize
    from rts.data.dataset import TileDataset
    from rts.data.normalization import Normalizer, raw_stack
    from rts.data.splits import TileRecord, read_metadata
    from rts.data.store import TileStore

    synthesize(tmp_path / "d", n_pos=3, n_neg=3, tile_size=64, n_regions=3, seed=3)
    rows = read_metadata(tmp_path / "d")
    recs = [TileRecord(r["tile_id"], r["TrainClass"] == "Positive", r["RegionName"]) for r in rows]
    store = TileStore(tmp_path / "d", tmp_path / "cache")
    norm = Normalizer(_stats(), ["ndvi", "re", "sr"])
    ds = TileDataset(store, recs, norm)
    for i, rec in enumerate(recs):
        tile = store.load(rec.tile_id)
        ref = norm(raw_stack(tile.rgb, tile.extra, norm.extra_index))
        np.testing.assert_array_equal(ds[i]["image"].numpy(), ref)
    cropped = TileDataset(store, recs, norm, crop_size=32)[(0, 5, 32, 1.0)]["image"]
    assert cropped.shape == (6, 32, 32)


def test_rotate90_on_a_non_square_tile_is_refused_in_one_line():
    rng = np.random.default_rng(10)
    rgb, label = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), np.zeros((32, 48), np.uint8)
    with pytest.raises(ValueError, match=r"augment.rotate90_p needs square tiles, got 32x48"):
        Augmenter(AugmentConfig()).apply(rgb, None, label)
    out, _, lab = Augmenter(AugmentConfig(rotate90_p=0)).apply(rgb, None, label)
    assert out.shape == (32, 48, 3) and lab.shape == (32, 48)


def test_load_sample_reads_what_load_gives_and_falls_back_on_other_headers(tmp_path):
    from rts.authoring.synth import synthesize
    from rts.data.splits import read_metadata
    from rts.data.store import TileStore

    synthesize(tmp_path / "d", n_pos=3, n_neg=3, tile_size=64, n_regions=3, seed=4)
    ids = [r["tile_id"] for r in read_metadata(tmp_path / "d")]
    cached, plain = TileStore(tmp_path / "d", tmp_path / "cache"), TileStore(tmp_path / "d")
    for store in (cached, plain):
        for tid in ids[:3]:
            tile = store.load(tid)
            for index in ([], [0, 2], [3, 1], [0, 1, 2, 3]):
                rgb, extra, label = store.load_sample(tid, index)
                np.testing.assert_array_equal(rgb, tile.rgb)
                np.testing.assert_array_equal(label, tile.label)
                if index:
                    assert extra.dtype == np.float32
                    np.testing.assert_array_equal(extra, np.asarray(tile.extra)[index])
                else:
                    assert extra is None
    # an entry np.save did not write in the plain form (here Fortran order) is read by np.load instead
    rgbl_path, extra_path = cached._cache_paths(ids[0])
    ref = np.load(extra_path)
    np.save(extra_path, np.asfortranarray(ref))
    _, extra, _ = cached.load_sample(ids[0], [1, 3])
    np.testing.assert_array_equal(extra, ref[[1, 3]])
