"""Model zoo: every arch builds offline and runs forward/backward on 64 px; fusion; weights handling."""

import os

import pytest
import torch
from safetensors.torch import save_file

from rts.config import ConfigError, ModelConfig
from rts.models import (
    WeightsError,
    build_model,
    decoder_parameters,
    encoder_parameters,
    model_outputs_loss,
    param_groups,
    set_encoder_trainable,
)
from rts.models.fusion import LateFusionModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cfg(arch="unet", encoder="resnet18", weights=None, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, encoder=encoder, encoder_weights=weights, **kw)


def forward_backward(model, channels, size=64):
    torch.manual_seed(0)
    model.train()
    out = model(torch.randn(2, channels, size, size))
    out.float().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    return out


ZOO = [
    ("unet", "resnet18"),
    ("unet", "mobilenet_v2"),  # demo encoders
    ("unetplusplus", "efficientnet-b0"),
    ("unet3plus", "resnet18"),
    ("deeplabv3plus", "resnet18"),
    ("segformer", "mit_b0"),
    ("swin_unet", "swin_tiny_patch4_window7_224"),
    ("swin_unet", "tu-convnext_atto"),
    ("vit_unet", "vit_tiny_patch16_224"),
    ("vit_unet", "vit_small_patch14_dinov2"),  # patch 14 does not divide 64: dynamic padding
]


@pytest.mark.parametrize("arch, encoder", ZOO)
def test_zoo_forward_backward_64px(arch, encoder):
    model = build_model(cfg(arch, encoder))
    out = forward_backward(model, 3)
    assert out.shape == (2, 1, 64, 64)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize(
    "arch, encoder, fusion, n_extra",
    [
        ("unet", "resnet18", "early", 2),
        ("unet", "resnet18", "early", 4),
        ("unet", "resnet18", "late", 2),
        ("unet", "resnet18", "late", 4),
        ("unet3plus", "resnet18", "late", 4),
        ("deeplabv3plus", "resnet18", "late", 2),  # dilated encoder: the EXTRA encoder must match stride 16
        ("segformer", "mit_b0", "late", 2),  # zero-channel placeholder level
        ("vit_unet", "vit_tiny_patch16_224", "late", 2),
        ("vit_unet", "vit_tiny_patch16_224", "early", 4),
    ],
)
def test_fusion_variants(arch, encoder, fusion, n_extra):
    model = build_model(cfg(arch, encoder, fusion=fusion), in_channels=3 + n_extra, n_extra=n_extra)
    assert isinstance(model, LateFusionModel) == (fusion == "late")
    assert forward_backward(model, 3 + n_extra).shape == (2, 1, 64, 64)


def test_late_fusion_starts_as_rgb_model_and_names_both_encoders():
    model = build_model(cfg(fusion="late"), in_channels=5, n_extra=2).eval()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("base.encoder.") for n in names) and any(n.startswith("extra_encoder.") for n in names)
    x = torch.randn(1, 5, 64, 64)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        # gamma = 0 at init: the EXTRA stream cannot change the output yet...
        assert torch.equal(model(x), model(x2))
        for block in model.fusion.values():
            block.gamma.fill_(1.0)
        # ...and it does once the residual gate opens.
        assert not torch.allclose(model(x), model(x2))


def test_param_helpers_split_and_freeze():
    model = build_model(cfg(fusion="late"), in_channels=6, n_extra=3)
    enc, dec = encoder_parameters(model), decoder_parameters(model)
    assert len(enc) + len(dec) == len(list(model.parameters()))
    enc_ids = {id(p) for p in enc}
    assert all(id(p) in enc_ids for p in model.extra_encoder.parameters())
    assert not any(id(p) in enc_ids for p in model.fusion.parameters())
    set_encoder_trainable(model, False)
    groups = param_groups(model, lr=1e-3, encoder_lr_multiplier=0.1)
    assert [g["name"] for g in groups] == ["decoder"]
    set_encoder_trainable(model, True)
    groups = param_groups(model, lr=1e-3, encoder_lr_multiplier=0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [("encoder", pytest.approx(1e-4)), ("decoder", 1e-3)]


def test_unet3plus_deep_supervision_outputs_and_loss():
    model = build_model(cfg("unet3plus", deep_supervision=True, deep_supervision_weight=0.4))
    x = torch.randn(2, 3, 64, 64)
    main, aux = model.train()(x)
    assert main.shape == (2, 1, 64, 64) and len(aux) == 4 and all(a.shape == (2, 1, 64, 64) for a in aux)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 1, 64, 64)  # eval: main logits only

    def loss_fn(logits, target, valid):  # mean logit: easy to check by hand
        return logits.mean()

    t, v = torch.zeros(2, 1, 64, 64), torch.ones(2, 1, 64, 64)
    total = model_outputs_loss(loss_fn, (main, aux), t, v, 0.4)
    expected = main.mean() + 0.4 * torch.stack([a.mean() for a in aux]).mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert model_outputs_loss(loss_fn, main, t, v, 0.4).item() == pytest.approx(main.mean().item())
    total.backward()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_into_encoder(tmp_path, suffix):
    torch.manual_seed(1)
    source = build_model(cfg())
    state = {k: v.clone() for k, v in source.encoder.state_dict().items()}
    path = tmp_path / f"resnet18{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    model = build_model(cfg(weights=str(path)))
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_file_early_fusion_keeps_rgb_filters(tmp_path):
    torch.manual_seed(2)
    state = build_model(cfg("unet", "efficientnet-b0")).encoder.state_dict()
    path = tmp_path / "effb0.pth"
    torch.save(state, path)
    model = build_model(cfg("unet", "efficientnet-b0", weights=str(path)), in_channels=5, n_extra=2)
    rgb = state["_conv_stem.weight"]
    stem = model.encoder._conv_stem.weight
    assert stem.shape[1] == 5
    assert torch.equal(stem[:, :3], rgb)
    assert torch.allclose(stem[:, 3], rgb.mean(1)) and torch.allclose(stem[:, 4], rgb.mean(1))
    assert forward_backward(model, 5).shape == (2, 1, 64, 64)  # static-same-padding stem still works


def test_weights_file_late_fusion_extra_encoder(tmp_path):
    state = build_model(cfg()).encoder.state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    model = build_model(cfg(weights=str(path), fusion="late"), in_channels=7, n_extra=4)
    assert torch.equal(model.base.encoder.conv1.weight, state["conv1.weight"])
    assert torch.allclose(model.extra_encoder.conv1.weight, state["conv1.weight"].mean(1, keepdim=True).repeat(1, 4, 1, 1) * 0.75)
    assert torch.equal(model.extra_encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_wrong_weights_file_names_file_and_keys(tmp_path):
    state = build_model(cfg()).encoder.state_dict()
    state.pop("layer4.1.bn2.weight")
    state["head.fc.weight"] = torch.zeros(2, 2)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        build_model(cfg(weights=str(path)))
    msg = str(err.value)
    assert "broken.pth" in msg and "layer4.1.bn2.weight" in msg and "head.fc.weight" in msg and "conv1.weight" in msg


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="nope.safetensors.*does not exist"):
        build_model(cfg(weights=str(tmp_path / "nope.safetensors")))


@pytest.fixture
def no_hub(monkeypatch):
    """Make every hub download fail at once (deterministic, no network timeouts)."""
    import segmentation_models_pytorch.encoders as smp_encoders
    import timm.models._builder as timm_builder

    def refuse(*args, **kwargs):
        raise OSError("hub unreachable (test)")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", refuse)
    monkeypatch.setattr(timm_builder, "load_pretrained", refuse)


@pytest.mark.parametrize(
    "arch, encoder, hint",
    [
        ("unet", "resnet18", "smp-hub/resnet18.imagenet"),
        ("unet3plus", "resnet18", "smp-hub/resnet18.imagenet"),
        ("swin_unet", "convnext_atto", "encoder_weights to that"),
        ("vit_unet", "vit_tiny_patch16_224", "encoder_weights to that"),
    ],
)
def test_imagenet_offline_fails_clearly(no_hub, arch, encoder, hint):
    with pytest.raises(WeightsError) as err:
        build_model(cfg(arch, encoder, weights="imagenet"))
    msg = str(err.value)
    assert "could not load pretrained weights" in msg and "hub unreachable" in msg and hint in msg


@pytest.mark.parametrize(
    "arch, encoder, suggestion",
    [
        ("unet", "resnet-18", "resnet18"),
        ("unetplusplus", "efficientnet-b9", "efficientnet-b"),
        ("vit_unet", "resnet18", "vit_small_patch14_dinov2"),
        ("swin_unet", "swin_tiny_patch4_window7", "swin_tiny_patch4_window7_224"),
    ],
)
def test_unknown_encoder_is_a_config_error(arch, encoder, suggestion):
    with pytest.raises(ConfigError, match="model.encoder") as err:
        build_model(cfg(arch, encoder))
    assert suggestion in str(err.value)
    assert isinstance(err.value, ValueError)


def test_channel_count_mismatch():
    with pytest.raises(ConfigError, match="in_channels must be 3"):
        build_model(cfg(), in_channels=4, n_extra=2)


def test_imagenet_through_library_then_rgb_kept(tmp_path, monkeypatch):
    """smp's own download path (served from a local file here), then early-fusion widening."""
    import segmentation_models_pytorch.encoders as smp_encoders

    state = build_model(cfg()).encoder.state_dict()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    monkeypatch.setattr(smp_encoders, "hf_hub_download", lambda repo_id, filename, revision=None: str(path))
    model = build_model(cfg(weights="imagenet"), in_channels=4, n_extra=1)
    assert torch.equal(model.encoder.conv1.weight[:, :3], state["conv1.weight"])
    assert torch.allclose(model.encoder.conv1.weight[:, 3], state["conv1.weight"].mean(1))


def test_decoder_channels_set_the_unet_decoder_widths():
    default = build_model(cfg("unet", "resnet18"), in_channels=5, n_extra=2)
    slim = build_model(cfg("unet", "resnet18", decoder_channels=[128, 64, 32, 16, 8]), in_channels=5, n_extra=2)
    widths = [b.conv2[0].out_channels for b in slim.decoder.blocks]
    assert widths == [128, 64, 32, 16, 8]
    assert [b.conv2[0].out_channels for b in default.decoder.blocks] == [256, 128, 64, 32, 16]
    assert sum(p.numel() for p in slim.decoder.parameters()) < 0.5 * sum(p.numel() for p in default.decoder.parameters())
    forward_backward(slim, 5)
    late = build_model(cfg("unet", "resnet18", decoder_channels=[64, 32, 16, 16, 8], fusion="late"), in_channels=5, n_extra=2)
    forward_backward(late, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "deeplabv3plus", "decoder_channels": [128, 64, 32, 16, 8]}, "only for arch"),
        ({"arch": "unet", "decoder_channels": [128, 64, 32]}, "must be 5 positive widths"),
        ({"arch": "unet", "decoder_channels": [128, 64, 32, 16, 0]}, "must be 5 positive widths"),
    ],
)
def test_decoder_channels_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=rf"model\.decoder_channels.*{message}"):
        ModelConfig(encoder="resnet18", encoder_weights=None, **kwargs)
