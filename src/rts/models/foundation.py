"""Foundation-model encoders behind ``vit_unet``: Prithvi, SatMAE, SAM, DINOv2.

Selected with ``model.arch: vit_unet`` and a *foundation name* in ``model.encoder``
(:data:`FOUNDATION_ENCODERS`). Each is a timm architecture that reproduces the official image
encoder, so the official checkpoint maps onto it key by key:

- ``prithvi_vit_100``: timm ``vit_base_patch16_224`` with 6 input bands (HLS Blue, Green, Red,
  NIR narrow, SWIR1, SWIR2); weights: Prithvi-100M (``Prithvi_100M.pt``).
- ``satmae_vit_large``: timm ``vit_large_patch16_224`` (RGB); weights: SatMAE fMoW-RGB ViT-L/16.
- ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``: timm ``samvit_{base,large,huge}_patch16`` (RGB;
  windowed attention + relative positions); weights: the SAM checkpoint's image encoder.
- ``dinov2_vits14`` / ``vitb14`` / ``vitl14`` / ``vitg14``: timm ``vit_*_patch14_dinov2`` (RGB);
  weights: DINOv2 ``*_pretrain.pth``.

The model is :class:`FoundationViTUNet`: a :class:`BandAdapter` maps the project's input
(R, G, B + selected EXTRA channels, z-scored) onto the encoder's bands, the encoder runs on
that, and the ``vit_unet`` decoder (four block read-outs, progressive upsampling, conv-stem
skips on the *raw* input) produces full-resolution logits. The adapter copies every band the
project has (Prithvi: Blue <- B, Green <- G, Red <- R, NIR <- ``nir`` when selected) and adds a
learned 1x1 projection of all inputs (so NDVI, RE, SR... and Prithvi's SWIR are learned). For
early fusion it starts at zero: the encoder first sees exactly the mapped bands and zeros
(= the dataset mean after z-scoring) for missing ones such as Prithvi's SWIR1/2, so a
pretrained encoder is undisturbed, and the EXTRA information enters as it is learned.

Single-frame Prithvi: Prithvi-100M is a 3D (temporal) MAE with tubelet size 1 and 3 frames.
On one image the 3D patch embedding equals a 2D one with the kernel's time axis summed out
(for tubelet 1: squeezed) and the position embedding is the first frame's slice of the 3D
sin-cos table; :func:`convert_checkpoint` does both (table in ``docs/models.md``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter
from timm.models.vision_transformer_sam import checkpoint_filter_fn as sam_filter
from torch import nn

from rts.models.fusion import LateFusionModel
from rts.models.vit import ViTBranch, ViTUNet, block_indices
from rts.models.weights import WeightsError, check_and_load_state_dict

log = logging.getLogger(__name__)

RGB_BANDS = ("red", "green", "blue")
PRITHVI_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")

# Which project input feeds an encoder band of the same meaning. Sentinel-2 B8 (our ``nir``,
# 842 nm) stands in for HLS narrow NIR (865 nm); nothing in the dataset approximates SWIR.
_BAND_SOURCE = {"red": "red", "green": "green", "blue": "blue", "nir": "nir"}


@dataclass(frozen=True)
class FoundationSpec:
    """One foundation encoder: timm architecture, its input bands and where its weights come from.

    Attributes:
        timm_name: timm architecture that reproduces the official image encoder.
        bands: Bands the pretrained patch embedding expects, in order.
        weights_file: File name of the official checkpoint (suggested local name).
        source: Where to download it (URL or Hugging Face model id).
        family: Checkpoint layout: ``prithvi``, ``mae`` (SatMAE), ``sam`` or ``dinov2``.
        timm_kwargs: Extra timm constructor arguments of the real architecture.
    """

    timm_name: str
    bands: tuple[str, ...]
    weights_file: str
    source: str
    family: Literal["prithvi", "mae", "sam", "dinov2"]
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)


_FAIR = "https://dl.fbaipublicfiles.com"
FOUNDATION_ENCODERS: dict[str, FoundationSpec] = {
    "prithvi_vit_100": FoundationSpec(
        "vit_base_patch16_224", PRITHVI_BANDS, "Prithvi_100M.pt",
        "https://huggingface.co/ibm-nasa-geospatial/Prithvi-100M/resolve/main/Prithvi_100M.pt (model id ibm-nasa-geospatial/Prithvi-100M)",
        "prithvi", {"img_size": 224},
    ),
    "satmae_vit_large": FoundationSpec(
        "vit_large_patch16_224", RGB_BANDS, "fmow_pretrain.pth",
        "the SatMAE fMoW-RGB pretrained ViT-Large checkpoint linked from https://github.com/sustainlab-group/SatMAE (README, 'Pretrained models')",
        "mae", {"img_size": 224},
    ),
    "sam_vit_b": FoundationSpec("samvit_base_patch16", RGB_BANDS, "sam_vit_b_01ec64.pth", f"{_FAIR}/segment_anything/sam_vit_b_01ec64.pth", "sam"),
    "sam_vit_l": FoundationSpec("samvit_large_patch16", RGB_BANDS, "sam_vit_l_0b3195.pth", f"{_FAIR}/segment_anything/sam_vit_l_0b3195.pth", "sam"),
    "sam_vit_h": FoundationSpec("samvit_huge_patch16", RGB_BANDS, "sam_vit_h_4b8939.pth", f"{_FAIR}/segment_anything/sam_vit_h_4b8939.pth", "sam"),
    **{
        f"dinov2_vit{s}14": FoundationSpec(
            f"vit_{size}_patch14_dinov2", RGB_BANDS, f"dinov2_vit{s}14_pretrain.pth", f"{_FAIR}/dinov2/dinov2_vit{s}14/dinov2_vit{s}14_pretrain.pth", "dinov2"
        )
        for s, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))
    },
}


def is_foundation_encoder(name: str) -> bool:
    """True if ``model.encoder`` names a foundation encoder of :data:`FOUNDATION_ENCODERS`."""
    return name in FOUNDATION_ENCODERS


def download_hint(name: str, path: str | Path | None = None) -> str:
    """Where to get the official checkpoint of ``name`` and where to put it."""
    spec = FOUNDATION_ENCODERS[name]
    where = str(path) if path is not None else f"weights/{spec.weights_file}"
    return (
        f"download {spec.weights_file!r} for model.encoder={name!r} from {spec.source} on a machine with network, "
        f"copy it to {where!r} (track it with DVC) and set model.encoder_weights to that path"
    )


# ------------------------------------------------------------------------------ encoder


def create_foundation_encoder(name: str, *, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """The timm image encoder of foundation model ``name``, random weights, heads removed.

    Built with the pretraining image size (so the position tables match the checkpoint) and
    dynamic input size: position embeddings are interpolated to any tile size (SAM's window
    attention pads, its relative positions are interpolated). The final norm / SAM conv neck
    and classifier are pruned: the decoder reads block outputs, and unused parameters would
    break DDP.

    Args:
        name: A key of :data:`FOUNDATION_ENCODERS`.
        overrides: Test-only timm kwargs that shrink the architecture (e.g. ``{"depth": 2}``;
            for SAM also ``global_attn_indexes``); the real default is the full architecture.
    """
    spec = FOUNDATION_ENCODERS[name]
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": len(spec.bands), **spec.timm_kwargs}
    if spec.family != "sam":  # SAM's patch embedding is already size-agnostic (strict_img_size=False)
        kwargs.update(dynamic_img_size=True, dynamic_img_pad=True)
    kwargs.update(overrides or {})
    encoder = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    encoder.prune_intermediate_layers(block_indices(len(encoder.blocks)), prune_norm=True, prune_head=True)
    return encoder


class BandAdapter(nn.Module):
    """Maps input channels onto the bands a pretrained encoder expects.

    ``out = S x + W x``: ``S`` is a fixed copy of every encoder band the input has (one-hot
    rows; a zero row for a band it lacks, e.g. Prithvi's SWIR), ``W`` a learned 1x1 projection
    of all inputs. ``init="zero"`` (RGB / early-fusion model) starts ``W`` at zero, so the
    encoder first sees exactly the mapped bands, and zeros (= the dataset mean after
    z-scoring) for missing ones; EXTRA channels without an encoder band (NDVI, RE, SR) and the
    missing bands are learned from there. ``init="mean"`` (EXTRA-only late-fusion branch, where
    little or nothing maps) starts every band without a source at the mean of the unmapped inputs.

    Args:
        input_bands: Names of the input channels in order (``red, green, blue`` + EXTRA names).
        target_bands: Bands of the encoder in order.
        init: Initial projection, see above.
    """

    def __init__(self, input_bands: Sequence[str], target_bands: Sequence[str], init: Literal["zero", "mean"] = "zero") -> None:
        super().__init__()
        self.input_bands = list(input_bands)
        self.target_bands = list(target_bands)
        select = torch.zeros(len(target_bands), len(input_bands))
        for t, band in enumerate(target_bands):
            src = _BAND_SOURCE.get(band)
            if src in self.input_bands:
                select[t, self.input_bands.index(src)] = 1.0
        # Persistent: a trained model keeps the band mapping it was trained with, even if rebuilt without channel names.
        self.register_buffer("select", select[:, :, None, None])
        self.project = nn.Conv2d(len(input_bands), len(target_bands), 1, bias=False)
        with torch.no_grad():
            self.project.weight.zero_()
            unused = select.sum(0) == 0
            if init == "mean" and unused.any():
                unmapped = select.sum(1) == 0
                self.project.weight[unmapped[:, None] & unused[None, :], 0, 0] = 1.0 / int(unused.sum())

    def describe(self) -> str:
        """Human-readable mapping, e.g. ``blue<-blue, ..., swir1<-0 (+ learned 1x1 of all inputs)``."""
        parts = []
        for t, band in enumerate(self.target_bands):
            hit = self.select[t, :, 0, 0].nonzero().flatten().tolist()
            parts.append(f"{band}<-{self.input_bands[hit[0]] if hit else '0'}")
        return ", ".join(parts) + f" (+ learned 1x1 of {self.input_bands})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.input_bands):
            raise ValueError(f"BandAdapter expects {len(self.input_bands)} channels {self.input_bands}, got input {tuple(x.shape)}")
        return nn.functional.conv2d(x, self.select.to(x.dtype)) + self.project(x)


class FoundationViTUNet(ViTUNet):
    """``vit_unet`` decoder on a foundation encoder fed through a :class:`BandAdapter`.

    Parameter names: ``encoder.*`` is exactly the converted official encoder (frozen in the
    freeze phase); ``band_adapter.*``, ``stem.*``, ``decoder.*`` are new and keep training.
    """

    def __init__(self, encoder: nn.Module, band_adapter: BandAdapter, decoder_channels: int = 128) -> None:
        super().__init__(encoder, len(band_adapter.input_bands), decoder_channels)
        self.band_adapter = band_adapter

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        vit = self.encoder.forward_intermediates(self.band_adapter(x), indices=self.indices, output_fmt="NCHW", intermediates_only=True)
        return self.stem(x) + list(vit)


class FoundationBranch(ViTBranch):
    """Late-fusion EXTRA branch: the same foundation encoder behind its own band adapter."""

    def __init__(self, encoder: nn.Module, band_adapter: BandAdapter) -> None:
        super().__init__(encoder, len(band_adapter.input_bands))
        self.band_adapter = band_adapter

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        vit = self.encoder.forward_intermediates(self.band_adapter(x), indices=self.indices, output_fmt="NCHW", intermediates_only=True)
        return self.stem(x) + list(vit)


# ------------------------------------------------------------------------------ checkpoints


def read_checkpoint(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """Read an official (or already converted) checkpoint as a flat ``{key: tensor}`` dict.

    Accepts ``.safetensors`` and ``.pth``/``.pt`` (loaded with ``weights_only=True``); a
    ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper (MAE / SatMAE training checkpoints,
    whose ``args`` entry is an ``argparse.Namespace``) is unwrapped.

    Raises:
        WeightsError: the file is missing (with the download hint), unreadable or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model.encoder_weights: weights file {str(path)!r} does not exist. To fix: {download_hint(name, path)}")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"model.encoder_weights: cannot read weights file {str(path)!r}: {type(e).__name__}: {e}") from e
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"model.encoder_weights: {str(path)!r} is not a state dict {{name: tensor}} (got {type(state).__name__})")
    return dict(state)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _convert_prithvi(state: dict[str, torch.Tensor], encoder: nn.Module) -> dict[str, torch.Tensor]:
    if "encoder.patch_embed.proj.weight" in state:  # Prithvi-EO / terratorch layout: encoder.* + decoder.*
        state = _strip_prefix(state, "encoder.")
    state = {k: v for k, v in state.items() if not k.startswith("decoder") and k != "mask_token"}
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 5:  # (D, C, T, p, p) 3D patch embedding -> 2D on one frame
        state["patch_embed.proj.weight"] = w.sum(dim=2)
    pos = state.get("pos_embed")
    grid = encoder.patch_embed.grid_size
    n_spatial = grid[0] * grid[1]
    if pos is not None and pos.shape[1] - 1 > n_spatial and (pos.shape[1] - 1) % n_spatial == 0:
        state["pos_embed"] = pos[:, : 1 + n_spatial]  # cls + the first frame of the (T, h, w) table
    return vit_filter(state, encoder)


def _convert_mae(state: dict[str, torch.Tensor], encoder: nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in state.items() if not k.startswith("decoder") and k != "mask_token"}
    return vit_filter(state, encoder)


def convert_checkpoint(name: str, state: dict[str, torch.Tensor], encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official checkpoint of ``name`` onto the keys of :func:`create_foundation_encoder`'s model.

    - Prithvi: drop the MAE decoder (``decoder_*``, ``mask_token``; ``decoder.*`` and the
      ``encoder.`` prefix of the Prithvi-EO layout); patch weight (768, 6, 1, 16, 16) summed
      over time -> (768, 6, 16, 16); ``pos_embed`` (1, 1 + 3*196, 768) -> cls + frame 0.
    - SatMAE: drop the MAE decoder; keys are timm's.
    - SAM: keep ``image_encoder.*`` (drop prompt encoder / mask decoder), ``mlp.lin*`` ->
      ``mlp.fc*`` (timm's own SAM filter).
    - DINOv2: drop ``mask_token``, SwiGLU ``w12/w3`` -> ``fc1/fc2`` (timm's own DINOv2 filter).

    Then (all) keys of modules pruned from the encoder (final ``norm``, SAM ``neck``, ``head``)
    are dropped, and position tables of another grid are resampled. A checkpoint that is
    already in this project's layout (``model.encoder.state_dict()``) passes through unchanged.
    """
    family = FOUNDATION_ENCODERS[name].family
    match family:
        case "prithvi":
            state = _convert_prithvi(state, encoder)
        case "mae":
            state = _convert_mae(state, encoder)
        case "sam":
            state = sam_filter(state, encoder)
        case "dinov2":
            state = vit_filter(state, encoder)
    pruned = {n for n, m in encoder.named_children() if isinstance(m, nn.Identity)}
    return {k: v for k, v in state.items() if k.split(".", 1)[0] not in pruned}


def load_foundation_weights(encoder: nn.Module, name: str, path: str | Path) -> None:
    """Read, convert (:func:`convert_checkpoint`) and load a checkpoint with strict key/shape checks.

    Raises:
        WeightsError: missing file (saying which file to download and where to put it), or
            missing / unexpected / wrong-shape keys, named.
    """

    spec = FOUNDATION_ENCODERS[name]
    state = read_checkpoint(path, name)
    try:
        state = convert_checkpoint(name, state, encoder)
    except Exception as e:  # e.g. a position table that is no (frames x) square grid: name the file, never skip it
        raise WeightsError(
            f"model.encoder_weights: cannot convert {str(path)!r} for {name!r} ({type(e).__name__}: {e}); expected the official {spec.weights_file} ({spec.source})"
        ) from e
    check_and_load_state_dict(
        encoder,
        state,
        path,
        expected=f"the official {spec.weights_file} of {name!r} ({spec.source}) or model.encoder.state_dict() of this project's model",
    )


# ------------------------------------------------------------------------------ model


def input_band_names(n_extra: int, extra_channels: Sequence[str] | None) -> list[str]:
    """``red, green, blue`` + EXTRA names; unknown names (``extra0``...) map to no encoder band."""
    if extra_channels is None:
        return list(RGB_BANDS) + [f"extra{i}" for i in range(n_extra)]
    if len(extra_channels) != n_extra:
        raise ValueError(f"extra_channels {list(extra_channels)} has {len(extra_channels)} names, n_extra is {n_extra}")
    return list(RGB_BANDS) + list(extra_channels)


def build_foundation_model(
    name: str,
    *,
    weights: str | None,
    n_extra: int = 0,
    extra_channels: Sequence[str] | None = None,
    fusion: Literal["early", "late"] = "early",
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Foundation encoder + ``vit_unet`` decoder for (B, 3 + n_extra, H, W) input.

    Args:
        name: Key of :data:`FOUNDATION_ENCODERS` (``model.encoder``).
        weights: ``model.encoder_weights``: ``None`` (random) or a local checkpoint path.
        n_extra: Number of EXTRA channels after RGB.
        extra_channels: Their names (``data.extra_channels``) so that e.g. ``nir`` feeds
            Prithvi's NIR band; ``None`` treats them all as unmapped (learned projection only).
        fusion: ``early``: one adapter maps all inputs. ``late``: RGB model +
            :class:`FoundationBranch` on the EXTRA channels (its own encoder copy, same
            weights, ``init="mean"`` adapter) fused by ``LateFusionModel``.
        overrides: Test-only timm kwargs (see :func:`create_foundation_encoder`).

    Raises:
        WeightsError: ``weights`` is a library tag (no hub here) or the file is missing / does not match.
    """

    if weights is not None and not weights.endswith((".pth", ".pt", ".safetensors")):
        raise WeightsError(
            f"model.encoder_weights: {weights!r} is not available for foundation encoder {name!r} (only a local file "
            f"is supported: .pth/.pt/.safetensors). To fix: {download_hint(name)}"
        )
    spec = FOUNDATION_ENCODERS[name]
    bands = input_band_names(n_extra, extra_channels)
    late = n_extra > 0 and fusion == "late"

    def encoder() -> nn.Module:
        enc = create_foundation_encoder(name, overrides=overrides)
        if weights is not None:
            load_foundation_weights(enc, name, weights)
        return enc

    rgb_bands = bands[:3] if late else bands
    adapter = BandAdapter(rgb_bands, spec.bands, init="zero")
    net: nn.Module = FoundationViTUNet(encoder(), adapter)
    log.info("foundation encoder %s (%s): %s", name, spec.timm_name, adapter.describe())
    if late:
        extra_adapter = BandAdapter(bands[3:], spec.bands, init="mean")
        branch = FoundationBranch(encoder(), extra_adapter)
        log.info("foundation EXTRA branch: %s", extra_adapter.describe())
        levels = list(range(len(net.out_channels)))
        net = LateFusionModel(net, branch, n_extra, levels, net.out_channels, branch.out_channels)
    return net


FOUNDATION_NAMES: tuple[str, ...] = tuple(FOUNDATION_ENCODERS)
__all__: list[str] = [
    "FOUNDATION_ENCODERS",
    "FOUNDATION_NAMES",
    "BandAdapter",
    "FoundationBranch",
    "FoundationSpec",
    "FoundationViTUNet",
    "build_foundation_model",
    "convert_checkpoint",
    "create_foundation_encoder",
    "download_hint",
    "input_band_names",
    "is_foundation_encoder",
    "load_foundation_weights",
    "read_checkpoint",
]
