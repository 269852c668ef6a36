"""Foundation encoders (Prithvi, SatMAE, SAM, DINOv2) behind ``vit_unet``: build, band adapter, weights.

Every model is built through ``build_model`` with random weights and the test-only
``encoder_overrides`` (depth 2) so that ViT-L / SAM stay fast on a busy CPU; the per-block shapes
are the real ones.
"""

import argparse
import os

import pytest
import torch
from safetensors.torch import save_file

from rts.config import ConfigError, ModelConfig
from rts.models import WeightsError, build_model, encoder_parameters, set_encoder_trainable
from rts.models.foundation import (
    FOUNDATION_ENCODERS,
    BandAdapter,
    FoundationViTUNet,
    create_foundation_encoder,
)
from rts.models.fusion import LateFusionModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

SMALL = {
    "prithvi_vit_100": {"depth": 2},
    "satmae_vit_large": {"depth": 2},
    "sam_vit_b": {"depth": 2, "global_attn_indexes": (1,)},  # one windowed, one global block
    "dinov2_vits14": {"depth": 2},
}


def cfg(encoder, weights=None, fusion="early") -> ModelConfig:
    return ModelConfig(arch="vit_unet", encoder=encoder, encoder_weights=weights, fusion=fusion)


def build(encoder, weights=None, extra=(), fusion="early"):
    return build_model(
        cfg(encoder, weights, fusion), in_channels=3 + len(extra), n_extra=len(extra), extra_channels=list(extra) or None, encoder_overrides=SMALL[encoder]
    )


def forward_backward(model, channels, size):
    torch.manual_seed(0)
    model.train()
    out = model(torch.randn(2, channels, size, size))
    out.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    return out


@pytest.mark.parametrize(
    "encoder, extra, size, embed_dim, patch",
    [
        ("prithvi_vit_100", (), 64, 768, 16),
        ("prithvi_vit_100", ("ndvi", "nir", "re", "sr"), 96, 768, 16),
        ("satmae_vit_large", (), 64, 1024, 16),
        ("sam_vit_b", (), 64, 768, 16),
        ("sam_vit_b", ("nir",), 224, 768, 16),  # 14 x 14 tokens: windows of 14 exactly
        ("dinov2_vits14", ("re", "sr"), 64, 384, 14),  # 64 is not a multiple of 14: dynamic padding
    ],
)
def test_forward_backward_full_resolution(encoder, extra, size, embed_dim, patch):
    model = build(encoder, extra=extra)
    assert isinstance(model, FoundationViTUNet)
    assert model.encoder.embed_dim == embed_dim and model.encoder.patch_embed.patch_size[0] == patch
    out = forward_backward(model, 3 + len(extra), size)
    assert out.shape == (2, 1, size, size)
    # Every parameter is used (final norm / SAM neck pruned): DDP needs no find_unused_parameters.
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    # The adapter is new: it must learn, also from its zero start.
    assert model.band_adapter.project.weight.grad.abs().sum() > 0


def test_late_fusion_extra_branch():
    model = build("sam_vit_b", extra=("ndvi", "re"), fusion="late")
    assert isinstance(model, LateFusionModel)
    assert model.base.band_adapter.input_bands == ["red", "green", "blue"]
    assert model.extra_encoder.band_adapter.input_bands == ["ndvi", "re"]
    assert forward_backward(model, 5, 64).shape == (2, 1, 64, 64)


# input bands -> expected encoder bands at initialisation (zero projection): index of the source input, or None (zeros)
@pytest.mark.parametrize(
    "inputs, targets, expected",
    [
        (["red", "green", "blue"], ["red", "green", "blue"], [0, 1, 2]),
        (["red", "green", "blue"], ["blue", "green", "red", "nir", "swir1", "swir2"], [2, 1, 0, None, None, None]),
        (["red", "green", "blue", "ndvi", "nir"], ["blue", "green", "red", "nir", "swir1", "swir2"], [2, 1, 0, 4, None, None]),
        (["red", "green", "blue", "sr", "re"], ["red", "green", "blue"], [0, 1, 2]),
    ],
)
def test_band_adapter_mapping_at_init(inputs, targets, expected):
    adapter = BandAdapter(inputs, targets)
    x = torch.arange(1, len(inputs) + 1, dtype=torch.float32).view(1, -1, 1, 1).expand(1, -1, 2, 2)
    out = adapter(x)[0, :, 0, 0].tolist()
    assert out == [0.0 if i is None else float(i + 1) for i in expected]


def test_band_adapter_mean_init_for_extra_branch():
    # EXTRA-only branch of Prithvi: nir maps to NIR; every other band starts at mean(ndvi, sr).
    adapter = BandAdapter(["ndvi", "nir", "sr"], ["blue", "green", "red", "nir", "swir1", "swir2"], init="mean")
    x = torch.tensor([2.0, 10.0, 4.0]).view(1, 3, 1, 1)
    assert adapter(x).flatten().tolist() == [3.0, 3.0, 3.0, 10.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="expects 3 channels"):
        adapter(torch.zeros(1, 4, 1, 1))


def test_band_adapter_stays_trainable_when_encoder_frozen():
    model = build("dinov2_vits14", extra=("ndvi",))
    set_encoder_trainable(model, False)
    frozen = {id(p) for p in encoder_parameters(model)}
    assert {id(p) for p in model.encoder.parameters()} <= frozen
    assert model.band_adapter.project.weight.requires_grad and id(model.band_adapter.project.weight) not in frozen


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("encoder", ["prithvi_vit_100", "sam_vit_b"])
def test_weights_file_roundtrip_strict(tmp_path, encoder, suffix):
    torch.manual_seed(1)
    source = build(encoder).encoder.state_dict()
    path = tmp_path / f"enc{suffix}"
    save_file(source, str(path)) if suffix == ".safetensors" else torch.save(source, path)
    model = build(encoder, weights=str(path), extra=("nir",))
    loaded = model.encoder.state_dict()
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], source[k]) for k in source)


def test_missing_key_is_named(tmp_path):
    state = build("dinov2_vits14").encoder.state_dict()
    del state["blocks.1.attn.qkv.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"broken\.safetensors.*missing keys \['blocks\.1\.attn\.qkv\.weight'\]"):
        build("dinov2_vits14", weights=str(path))


def test_wrong_shape_is_named(tmp_path):
    state = build("satmae_vit_large").encoder.state_dict()
    state["pos_embed"] = state["pos_embed"][..., :10]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"pos_embed: file \(1, 197, 10\) vs model \(1, 197, 1024\)"):
        build("satmae_vit_large", weights=str(path))


def test_unconvertible_checkpoint_is_named(tmp_path):
    state = build("prithvi_vit_100").encoder.state_dict()
    state["pos_embed"] = torch.zeros(1, 1 + 150, 768)  # neither 14 x 14 nor frames x 14 x 14
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"cannot convert .*odd\.pt.*Prithvi_100M\.pt"):
        build("prithvi_vit_100", weights=str(path))


@pytest.mark.parametrize(
    "encoder, weights, message",
    [
        ("prithvi_vit_100", "weights/none/Prithvi_100M.pt", r"does not exist.*Prithvi_100M\.pt.*huggingface\.co/ibm-nasa-geospatial/Prithvi-100M"),
        ("sam_vit_b", "imagenet", r"only a local file.*sam_vit_b_01ec64\.pth"),
        ("dinov2_vits14", "/nope/d.pth", r"/nope/d\.pth.*dinov2_vits14_pretrain\.pth"),
    ],
)
def test_unavailable_weights_say_what_to_download(encoder, weights, message):
    with pytest.raises(WeightsError, match=message):
        build(encoder, weights=weights)


def test_foundation_name_needs_vit_unet():
    with pytest.raises(ConfigError, match="needs model.arch: vit_unet"):
        build_model(ModelConfig(arch="unet", encoder="sam_vit_b", encoder_weights=None))
    with pytest.raises(ConfigError, match="foundation encoders"):
        build_model(ModelConfig(arch="vit_unet", encoder="prithvi_vit_1000", encoder_weights=None))


# ------------------------------------------------------------------------------ official layouts


def test_prithvi_official_layout_converts(tmp_path):
    """Prithvi-100M: 3D patch embedding (D, 6, 1, 16, 16), 3-frame pos table, MAE decoder keys."""
    torch.manual_seed(2)
    enc = build("prithvi_vit_100").encoder.state_dict()
    frame0 = enc["pos_embed"]
    official = dict(enc)
    official["patch_embed.proj.weight"] = enc["patch_embed.proj.weight"].unsqueeze(2)
    official["pos_embed"] = torch.cat([frame0, torch.randn(1, 2 * 196, 768)], dim=1)  # frames 1, 2 follow frame 0
    official["norm.weight"], official["norm.bias"] = torch.ones(768), torch.zeros(768)
    official.update({"mask_token": torch.zeros(1, 1, 512), "decoder_embed.weight": torch.zeros(512, 768), "decoder_pred.bias": torch.zeros(1536)})
    path = tmp_path / "Prithvi_100M.pt"
    torch.save(official, path)
    loaded = build("prithvi_vit_100", weights=str(path)).encoder.state_dict()
    assert loaded["patch_embed.proj.weight"].shape == (768, 6, 16, 16)
    assert torch.equal(loaded["patch_embed.proj.weight"], enc["patch_embed.proj.weight"])
    assert torch.equal(loaded["pos_embed"], frame0)


def test_sam_official_layout_converts(tmp_path):
    """SAM: image_encoder.* prefix, mlp.lin1/lin2, prompt encoder / mask decoder and conv neck dropped."""
    torch.manual_seed(3)
    enc = build("sam_vit_b").encoder.state_dict()
    official = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in enc.items()}
    official["image_encoder.neck.0.weight"] = torch.zeros(256, 768, 1, 1)
    official["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 256)
    official["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(official, path)
    loaded = build("sam_vit_b", weights=str(path)).encoder.state_dict()
    assert all(torch.equal(loaded[k], enc[k]) for k in enc)


def test_satmae_training_checkpoint_with_args_loads(tmp_path):
    """SatMAE / MAE training checkpoints: {'model': ..., 'args': Namespace}, with decoder keys."""
    torch.manual_seed(4)
    enc = build("satmae_vit_large").encoder.state_dict()
    model_state = dict(enc, mask_token=torch.zeros(1, 1, 512), **{"decoder_blocks.0.norm1.weight": torch.ones(512)})
    path = tmp_path / "fmow_pretrain.pth"
    torch.save({"model": model_state, "epoch": 3, "args": argparse.Namespace(model="mae_vit_large_patch16")}, path)
    loaded = build("satmae_vit_large", weights=str(path)).encoder.state_dict()
    assert all(torch.equal(loaded[k], enc[k]) for k in enc)


def test_dinov2_official_layout_converts(tmp_path):
    torch.manual_seed(5)
    enc = build("dinov2_vits14").encoder.state_dict()
    official = dict(enc, mask_token=torch.zeros(1, 384), **{"norm.weight": torch.ones(384), "norm.bias": torch.zeros(384)})
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official, path)
    loaded = build("dinov2_vits14", weights=str(path)).encoder.state_dict()
    assert all(torch.equal(loaded[k], enc[k]) for k in enc)


def test_default_architecture_is_the_full_one():
    enc = create_foundation_encoder("dinov2_vits14")  # smallest real one: ViT-S/14, 12 blocks
    assert len(enc.blocks) == 12 and enc.embed_dim == 384 and enc.pos_embed.shape == (1, 1 + 37 * 37, 384)
    assert set(FOUNDATION_ENCODERS) >= {"prithvi_vit_100", "satmae_vit_large", "sam_vit_b", "dinov2_vits14"}
    assert FOUNDATION_ENCODERS["prithvi_vit_100"].bands == ("blue", "green", "red", "nir", "swir1", "swir2")


def test_checkpoint_carries_band_mapping():
    """A model rebuilt without channel names (inference) takes the trained mapping from the state dict."""
    trained = build("prithvi_vit_100", extra=("ndvi", "nir"))
    rebuilt = build_model(cfg("prithvi_vit_100"), in_channels=5, n_extra=2, encoder_overrides=SMALL["prithvi_vit_100"])
    assert rebuilt.band_adapter.select[3].sum() == 0  # unnamed EXTRA: nothing feeds NIR
    rebuilt.load_state_dict(trained.state_dict())
    assert rebuilt.band_adapter.select[3, 4, 0, 0] == 1  # NIR <- nir (input 4) restored
