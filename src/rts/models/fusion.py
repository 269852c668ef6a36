"""Late fusion of RGB and EXTRA (NDVI, NIR, RE, SR) inputs into one segmentation.

Two encoders of the same architecture, one per modality, produce feature pyramids of equal
shapes; at every scale a :class:`CrossModalityAttention` block injects the EXTRA features into
the RGB stream as a gated residual, and the (single) decoder of the base model reads the fused
pyramid. This follows the residual cross-modality attention idea of Li et al. (2025) in a
compact form: a channel gate computed from both modalities ("which EXTRA channels matter
here") times a spatial gate ("where"), scaled by a learnable ``gamma`` that starts at 0. At
initialisation the model is therefore exactly the RGB model (a pretrained RGB path is not
disturbed by a randomly initialised EXTRA stream); the EXTRA contribution grows as ``gamma``
learns.

Early fusion needs no module here: the builder stacks RGB + EXTRA into one encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CrossModalityAttention(nn.Module):
    """Residual cross-modality attention for one scale: ``rgb + gamma * c(rgb, e) * s(rgb, e) * e``.

    Args:
        rgb_channels: Channels of the RGB feature map (also the output channels).
        extra_channels: Channels of the EXTRA feature map (aligned to ``rgb_channels`` by a 1x1 conv).
        reduction: Bottleneck ratio of the channel gate.
    """

    def __init__(self, rgb_channels: int, extra_channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(rgb_channels // reduction, 8)
        self.align = nn.Sequential(nn.Conv2d(extra_channels, rgb_channels, 1, bias=False), nn.BatchNorm2d(rgb_channels))
        self.channel_gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(2 * rgb_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, rgb_channels, 1),
            nn.Sigmoid(),
        )
        self.spatial_gate = nn.Sequential(nn.Conv2d(4, 1, 7, padding=3), nn.Sigmoid())
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, rgb: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        extra = self.align(extra)
        channel = self.channel_gate(torch.cat([rgb, extra], dim=1))
        stats = [rgb.mean(1, keepdim=True), rgb.amax(1, keepdim=True), extra.mean(1, keepdim=True), extra.amax(1, keepdim=True)]
        spatial = self.spatial_gate(torch.cat(stats, dim=1))
        return rgb + self.gamma * channel * spatial * extra


def encode(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Feature pyramid of a base model (smp model, UNet3+ or ViTUNet)."""
    if hasattr(model, "forward_features"):
        return model.forward_features(x)
    return model.encoder(x)


def decode(model: nn.Module, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Decoder and head of a base model on ``features``; logits at ``size``."""
    if hasattr(model, "decode"):
        return model.decode(features, size)
    out = model.segmentation_head(model.decoder(features))  # smp SegmentationModel
    if out.shape[-2:] != tuple(size):
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
    return out


class LateFusionModel(nn.Module):
    """Separate RGB and EXTRA encoders, per-scale cross-modality attention, one decoder.

    The input is the usual stacked tensor (B, 3 + n_extra, H, W), RGB first. Parameter names:
    ``base.encoder.*`` (RGB encoder), ``extra_encoder.*`` (EXTRA encoder), ``fusion.*`` and
    ``base.decoder.*`` / heads, so the ``'encoder' in name`` freeze rule freezes both encoders
    and keeps training the (new) fusion blocks and the decoder.

    Args:
        base: The RGB segmentation model (its encoder and decoder are used).
        extra_encoder: Encoder for the EXTRA channels with the same pyramid shapes as ``base``'s.
        n_extra: Number of EXTRA input channels.
        fuse_levels: Pyramid levels to fuse (others pass the RGB features through unchanged).
        rgb_channels: Channels per level of the RGB pyramid.
        extra_channels: Channels per level of the EXTRA pyramid.
    """

    def __init__(
        self,
        base: nn.Module,
        extra_encoder: nn.Module,
        n_extra: int,
        fuse_levels: Sequence[int],
        rgb_channels: Sequence[int],
        extra_channels: Sequence[int],
    ) -> None:
        super().__init__()
        self.base = base
        self.extra_encoder = extra_encoder
        self.n_extra = n_extra
        self.fusion = nn.ModuleDict({str(i): CrossModalityAttention(rgb_channels[i], extra_channels[i]) for i in fuse_levels})

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if x.shape[1] != 3 + self.n_extra:
            raise ValueError(f"late-fusion model expects 3 RGB + {self.n_extra} EXTRA channels, got input {tuple(x.shape)}")
        rgb, extra = x[:, :3], x[:, 3:]
        if hasattr(self.base, "check_input_shape"):
            self.base.check_input_shape(rgb)  # smp's own "divisible by the output stride" message
        rgb_feats = encode(self.base, rgb)
        extra_feats = self.extra_encoder(extra)
        fused = [self.fusion[str(i)](r, e) if str(i) in self.fusion else r for i, (r, e) in enumerate(zip(rgb_feats, extra_feats))]
        return decode(self.base, fused, x.shape[-2:])
