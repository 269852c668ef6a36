"""Losses: hand-computed 4-pixel values, ignore masks, empty batches, agreement with smp."""

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from rts.config import BalancedCEConfig, FocalConfig, TverskyConfig
from rts.training.losses import BalancedCELoss, BCELoss, FocalLoss, TverskyLoss, balanced_positive_weight, build_loss

LN2, LN43, LN3 = math.log(2), math.log(4 / 3), math.log(3)


def t4(values, dtype=torch.float32):
    """Four pixels as a (1, 1, 2, 2) tensor."""
    return torch.tensor(values, dtype=dtype).reshape(1, 1, 2, 2)


ALL = t4([1, 1, 1, 1], torch.bool)


# logits 0 -> p 0.5; ln3 -> p 0.75; -ln3 -> p 0.25
@pytest.mark.parametrize(
    "logits, target, valid, alpha, gamma, expected",
    [
        # p_t = .5, .5, .75, .75; alpha_t = .25, .75, .25, .75; (1-p_t)^2 = .25, .25, .0625, .0625
        ([0, 0, LN3, -LN3], [1, 0, 1, 0], [1, 1, 1, 1], 0.25, 2.0, (0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2 + 0.25 * 0.0625 * LN43 + 0.75 * 0.0625 * LN43) / 4),
        # gamma 0, alpha .5: half the BCE
        ([0, 0, LN3, -LN3], [1, 0, 1, 0], [1, 1, 1, 1], 0.5, 0.0, 0.5 * (2 * LN2 + 2 * LN43) / 4),
        # only the two confident pixels valid: mean over 2, not 4
        ([0, 0, LN3, -LN3], [1, 0, 1, 0], [0, 0, 1, 1], 0.25, 2.0, (0.25 * 0.0625 * LN43 + 0.75 * 0.0625 * LN43) / 2),
        # wrong and confident: y=1, p=.25 -> p_t=.25, (1-p_t)^2=.5625, -log p_t = ln4
        ([-LN3, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], 0.75, 2.0, 0.75 * 0.5625 * math.log(4)),
    ],
)
def test_focal_hand_values(logits, target, valid, alpha, gamma, expected):
    loss = FocalLoss(alpha, gamma)(t4(logits), t4(target), t4(valid, torch.bool))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "logits, target, alpha, beta, smooth, expected",
    [
        # p = .75 .25 .5 .5, y = 1 1 0 0: TP 1, FN 1, FP 1
        ([LN3, -LN3, 0, 0], [1, 1, 0, 0], 0.3, 0.7, 0.0, 1 - 1 / (1 + 0.3 + 0.7)),
        # p = .75 .25 .25 .25, y = 1 0 0 0: TP .75, FN .25, FP .75
        ([LN3, -LN3, -LN3, -LN3], [1, 0, 0, 0], 0.3, 0.7, 1.0, 1 - 1.75 / (0.75 + 0.3 * 0.25 + 0.7 * 0.75 + 1)),
        # same with alpha/beta swapped: FP now cheaper -> lower loss
        ([LN3, -LN3, -LN3, -LN3], [1, 0, 0, 0], 0.7, 0.3, 1.0, 1 - 1.75 / (0.75 + 0.7 * 0.25 + 0.3 * 0.75 + 1)),
        # no positives, smooth 1: FP = 4 * .25 = 1 still penalised
        ([-LN3, -LN3, -LN3, -LN3], [0, 0, 0, 0], 0.3, 0.7, 1.0, 1 - 1 / (1 + 0.7 * 1.0)),
    ],
)
def test_tversky_hand_values(logits, target, alpha, beta, smooth, expected):
    loss = TverskyLoss(alpha, beta, smooth)(t4(logits), t4(target), ALL)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "weighting, expected_weight",
    [("linear", 9.0), ("sqrt", 3.0), ("log", math.log(10.0))],  # counts (900, 100): ratio 9
)
def test_balanced_ce_hand_values(weighting, expected_weight):
    assert balanced_positive_weight((900, 100), weighting) == pytest.approx(expected_weight)
    loss = build_loss("balanced_ce", focal=FocalConfig(), tversky=TverskyConfig(), balanced_ce=BalancedCEConfig(weighting), class_pixel_counts=(900, 100))
    # all logits 0: each pixel costs ln2, positives weighted: (w + 1 + w + 1) ln2 / 4
    value = loss(t4([0, 0, 0, 0]), t4([1, 0, 1, 0]), ALL)
    assert value.item() == pytest.approx((expected_weight + 1) / 2 * LN2, rel=1e-5)


def test_balanced_ce_needs_counts():
    with pytest.raises(ValueError, match="class_pixel_counts"):
        build_loss("balanced_ce", focal=FocalConfig(), tversky=TverskyConfig(), balanced_ce=BalancedCEConfig())
    with pytest.raises(ValueError, match="num_rts > 0"):
        balanced_positive_weight((100, 0), "sqrt")


def test_bce_matches_torch_on_valid_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.7).float()
    valid = torch.rand(2, 1, 8, 8, generator=g) > 0.3
    expected = F.binary_cross_entropy_with_logits(logits[valid], target[valid])
    assert BCELoss()(logits, target, valid).item() == pytest.approx(expected.item(), rel=1e-6)


LOSSES = {
    "focal": FocalLoss(0.25, 2.0),
    "tversky": TverskyLoss(0.3, 0.7, 1.0),
    "balanced_ce": BalancedCELoss(5.0),
    "bce": BCELoss(),
}


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_change_nothing(name):
    loss_fn = LOSSES[name]
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.6).float()
    valid = torch.rand(2, 1, 8, 8, generator=g) > 0.4
    a = logits.clone().requires_grad_(True)
    la = loss_fn(a, target, valid)
    la.backward()
    # invalid pixels: wild logits (incl. NaN) and raw label 255
    b_init = torch.where(valid, logits, torch.full_like(logits, 50.0))
    b_init[~valid & (torch.arange(128).reshape(2, 1, 8, 8) % 2 == 0)] = float("nan")
    b = b_init.requires_grad_(True)
    lb = loss_fn(b, torch.where(valid, target, torch.full_like(target, 255.0)), valid)
    lb.backward()
    assert lb.item() == pytest.approx(la.item(), rel=1e-6)
    assert torch.all(b.grad[~valid] == 0)
    assert torch.allclose(a.grad[valid], b.grad[valid])
    assert torch.all(a.grad[~valid] == 0)


@pytest.mark.parametrize("name", LOSSES)
def test_all_invalid_batch_is_zero_with_gradient(name):
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = LOSSES[name](logits, torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad == 0)


@pytest.mark.parametrize("name", ["focal", "balanced_ce", "bce"])
def test_soft_label_half_prefers_uncertain_logit(name):
    target = torch.full((1, 1, 2, 2), 0.5)
    at = lambda v: LOSSES[name](torch.full((1, 1, 2, 2), v), target, ALL).item()  # noqa: E731
    assert at(0.0) < at(5.0) and at(0.0) < at(-5.0)


def test_float_valid_weights_a_weighted_mean():
    # weights 1 and 3 on two pixels: mean = (l0 + 3 l1) / 4
    logits, target = t4([0, LN3, 0, 0]), t4([1, 1, 0, 0])
    valid = t4([1, 3, 0, 0])
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten()
    expected = (per_pixel[0] + 3 * per_pixel[1]) / 4
    assert BCELoss()(logits, target, valid).item() == pytest.approx(expected.item(), rel=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="share one shape"):
        BCELoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4), torch.ones(1, 1, 4, 4))


def _random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(2, 1, 16, 16, generator=g)
    target = (torch.rand(2, 1, 16, 16, generator=g) > 0.8).float()
    target[0, 0, 0, 0] = 1.0  # at least one positive: smp's Tversky zeroes batches without positives
    ignore = torch.rand(2, 1, 16, 16, generator=g) > 0.7
    ignore[0, 0, 0, 0] = False
    return logits, target, ignore


@pytest.mark.parametrize("alpha, gamma, seed", [(0.25, 2.0, 0), (0.75, 1.0, 1), (0.5, 0.0, 2), (0.1, 5.0, 3)])
def test_focal_agrees_with_smp(alpha, gamma, seed):
    logits, target, ignore = _random_batch(seed)
    ref = smp.losses.FocalLoss(mode="binary", alpha=alpha, gamma=gamma, ignore_index=255)(logits, torch.where(ignore, 255.0, target))
    ours = FocalLoss(alpha, gamma)(logits, target, ~ignore)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("alpha, beta, smooth, seed", [(0.3, 0.7, 1.0, 0), (0.7, 0.3, 0.0, 1), (0.5, 0.5, 1.0, 2)])
def test_tversky_agrees_with_smp_alpha_beta_swapped(alpha, beta, smooth, seed):
    logits, target, ignore = _random_batch(seed)
    # smp: alpha weights FP, beta FN; ours (the Tversky index's): alpha on FN, beta on FP.
    ref = smp.losses.TverskyLoss(mode="binary", from_logits=True, alpha=beta, beta=alpha, smooth=smooth, ignore_index=255)(
        logits, torch.where(ignore, 255.0, target)
    )
    ours = TverskyLoss(alpha, beta, smooth)(logits, target, ~ignore)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_loss_is_float32_under_half_inputs():
    logits = torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16)
    assert FocalLoss()(logits, t4([1, 0, 1, 0]), ALL).dtype == torch.float32
