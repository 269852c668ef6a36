"""EMA: closed-form shadow after k updates, copied buffers, state_dict round trip, unwrapping."""

import math

import pytest
import torch
from torch import nn

from rts.models.ema import ModelEMA, unwrap_model


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))


def fill(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


@pytest.mark.parametrize("decay, k, p0, v", [(0.9, 1, 0.0, 1.0), (0.9, 3, 2.0, -1.0), (0.5, 5, 1.0, 3.0), (0.999, 10, 0.0, 1.0)])
def test_shadow_matches_closed_form(decay, k, p0, v):
    model = tiny_model()
    fill(model, p0)
    ema = ModelEMA(model, decay)
    fill(model, v)  # the live weights jump to v and stay there
    for _ in range(k):
        ema.update(model)
    expected = v + (p0 - v) * decay**k  # ema_k = d^k p0 + (1 - d^k) v
    for p in ema.module.parameters():
        assert torch.allclose(p, torch.full_like(p, expected), atol=1e-6)
    assert ema.updates == k


def test_changing_params_sequence():
    model = tiny_model()
    fill(model, 0.0)
    ema = ModelEMA(model, 0.5)
    for value in (4.0, 8.0):
        fill(model, value)
        ema.update(model)
    # e1 = .5*0 + .5*4 = 2; e2 = .5*2 + .5*8 = 5
    assert all(torch.allclose(p, torch.full_like(p, 5.0)) for p in ema.module.parameters())


def test_buffers_are_copied_not_averaged():
    model = tiny_model()
    ema = ModelEMA(model, 0.99)
    model.train()
    model(torch.randn(4, 2, 3, 3) * 5 + 3)  # BatchNorm updates its running stats
    ema.update(model)
    bn_live, bn_ema = model[1], ema.module[1]
    assert torch.equal(bn_ema.running_mean, bn_live.running_mean)
    assert torch.equal(bn_ema.running_var, bn_live.running_var)
    assert bn_ema.num_batches_tracked.item() == 1


def test_shadow_is_frozen_eval_copy():
    model = tiny_model()
    ema = ModelEMA(model, 0.9)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    fill(model, 7.0)  # the shadow is a copy, not a view of the live weights
    assert not any(torch.all(p == 7.0) for p in ema.module.parameters())


def test_state_dict_round_trip():
    model = tiny_model()
    ema = ModelEMA(model, 0.9)
    fill(model, 1.0)
    for _ in range(3):
        ema.update(model)
    state = ema.state_dict()
    other = ModelEMA(tiny_model(), 0.5)
    other.load_state_dict(state)
    assert other.updates == 3 and other.decay == 0.9
    for a, b in zip(ema.module.state_dict().values(), other.module.state_dict().values()):
        assert torch.equal(a, b)


def test_unwraps_data_parallel_and_compile():
    model = tiny_model()
    assert unwrap_model(nn.DataParallel(model)) is model
    assert unwrap_model(torch.compile(model)) is model  # not called, so nothing is compiled
    ema = ModelEMA(nn.DataParallel(model), 0.9)
    assert isinstance(ema.module, nn.Sequential)
    fill(model, 1.0)
    ema.update(nn.DataParallel(model))
    assert all(torch.allclose(p, torch.full_like(p, 0.1) + 0.9 * q) for p, q in zip(ema.module.parameters(), tiny_model().parameters()))


def test_warmup_decay_off_by_default():
    assert ModelEMA(tiny_model(), 0.999).current_decay() == 0.999
    warm = ModelEMA(tiny_model(), 0.999, warmup=True, warmup_steps=2000)
    assert warm.current_decay() == pytest.approx(0.999 * (1 - math.exp(-1 / 2000)))


def test_bad_decay_is_an_error():
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEMA(tiny_model(), 1.0)
