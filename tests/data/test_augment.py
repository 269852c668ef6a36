"""The augmenter (issue 18, P1): uint8 RGB and float32 EXTRA warped with one draw per sample.

What the change claims: the same geometry as warping one float32 stack of RGB + EXTRA (same
label, bit-identical EXTRA, RGB within 1 of the stack's values), deterministic per seed, the label
following the image, and no fill value that zeroes channels of a 7-channel sample.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from rts.config import AugmentConfig
from rts.data.augment import Augmenter

ALL_ON = AugmentConfig(rotate90_p=1, hflip_p=0.5, vflip_p=0.5, affine_p=1, elastic_p=1, color_p=1)
DEFAULT_MIX = AugmentConfig(affine_p=0.5, elastic_p=0.5, color_p=0.5)


def _sample(rng, size=64, n_extra=4):
    label = np.zeros((size, size), np.uint8)
    label[10:40, 20:50] = 1
    label[45:60, 5:20] = 255
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    extra = rng.normal(0, 1, (size, size, n_extra)).astype(np.float32)
    return rgb, extra, label


def _stack_path(aug: Augmenter, rgb, extra, label, seed):
    """The previous path: colour on RGB, then the same geometric transforms on one float32 stack."""
    aug.color.set_random_seed(seed)
    stack_geo = A.Compose(list(aug.geometric.transforms), seed=seed + 1)
    rgb = aug.color(image=np.ascontiguousarray(rgb))["image"]
    out = stack_geo(image=np.concatenate([rgb.astype(np.float32), extra], axis=-1), mask=label)
    return out["image"], out["mask"]


@pytest.mark.parametrize("cfg", [ALL_ON, DEFAULT_MIX], ids=["all-on", "default-mix"])
def test_same_geometry_as_the_float32_stack(cfg):
    rng = np.random.default_rng(0)
    rgb, extra, label = _sample(rng)
    aug = Augmenter(cfg)
    for seed in range(12):
        aug.seed(seed)
        stack, out = aug(rgb, extra, label)
        ref_stack, ref_label = _stack_path(Augmenter(cfg), rgb, extra, label, seed)
        assert stack.dtype == np.float32 and stack.shape == ref_stack.shape == (64, 64, 7)
        np.testing.assert_array_equal(out, ref_label)
        np.testing.assert_array_equal(stack[..., 3:], ref_stack[..., 3:])  # EXTRA: bit-identical
        assert np.abs(stack[..., :3] - ref_stack[..., :3]).max() <= 1.0  # RGB: warped as uint8
        assert np.array_equal(stack[..., :3], np.round(stack[..., :3]))


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


def test_seven_channels_no_border_or_fill_zeroes_a_channel():
    # The multi-channel pitfall: a border or fill value of 3 values on a 7-channel image leaves the
    # other channels at 0 where the warp leaves the tile. A constant tile zoomed out, shifted,
    # rotated and deformed must stay that constant in every channel (borders reflect).
    cfg = AugmentConfig(rotate90_p=1, hflip_p=0.5, vflip_p=0.5, affine_p=1, shift_limit=0.3, scale_limit=0.5,
                        rotate_limit=45, elastic_p=1, color_p=0)
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
