"""ViT encoder (DINOv2-style foundation-model architecture from timm) with a progressive decoder.

``vit_unet``: a plain timm ``VisionTransformer`` (e.g. ``vit_small_patch14_dinov2``,
``vit_tiny_patch16_224``) built with ``dynamic_img_size`` / ``dynamic_img_pad`` so any tile size
works (position embeddings are interpolated, the input is padded to a multiple of the patch).
Four evenly spaced transformer blocks are read out with ``forward_intermediates`` (tokens
reshaped to a (B, D, H/p, W/p) map), projected and summed (SETR-MLA style), then upsampled
progressively (x2 steps, conv-BN-ReLU) to 1/4 and 1/2 resolution where a small convolutional
stem on the raw input supplies the fine detail ViT patches lose (RTS headwalls are a few
pixels wide at 3 m), U-Net style.

Parameter naming: the ViT is ``encoder`` (its state dict is exactly timm's, so a timm/DINOv2
checkpoint of the same architecture loads into ``model.encoder``); the stem and decoder are
trained from scratch and are not named ``encoder``/``backbone`` so that the freeze phase keeps
training them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def create_vit(name: str, in_channels: int, pretrained: bool) -> nn.Module:
    """A timm ViT with dynamic image size and no classifier head."""
    return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_channels, dynamic_img_size=True, dynamic_img_pad=True)


def block_indices(depth: int, n_levels: int = 4) -> list[int]:
    """Evenly spaced transformer blocks ending with the last one, e.g. 12 blocks -> [2, 5, 8, 11]."""
    step = max(depth // n_levels, 1)
    return sorted({depth - 1 - i * step for i in range(n_levels) if depth - 1 - i * step >= 0})


class ConvStem(nn.Module):
    """Two stride-2 conv blocks on the raw input: skip features at 1/2 and 1/4 resolution."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        self.s2 = _conv_bn_relu(in_channels, channels[0], stride=2)
        self.s4 = _conv_bn_relu(channels[0], channels[1], stride=2)
        self.out_channels = list(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s2 = self.s2(x)
        return [s2, self.s4(s2)]


class ViTBranch(nn.Module):
    """ViT + conv stem: ``forward(x) -> [stem 1/2, stem 1/4, vit levels...]`` (one input modality)."""

    def __init__(self, encoder: nn.Module, in_channels: int, n_levels: int = 4) -> None:
        super().__init__()
        self.encoder = encoder
        self.stem = ConvStem(in_channels)
        self.indices = block_indices(len(encoder.blocks), n_levels)
        self.out_channels = self.stem.out_channels + [encoder.embed_dim] * len(self.indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        vit = self.encoder.forward_intermediates(x, indices=self.indices, output_fmt="NCHW", intermediates_only=True)
        return self.stem(x) + list(vit)


class ViTDecoder(nn.Module):
    """Sum of projected ViT levels, then x2 upsampling steps with stem skips at 1/4 and 1/2."""

    def __init__(self, in_channels: Sequence[int], patch_size: int, channels: int = 128) -> None:
        super().__init__()
        stem2, stem4, *vit = in_channels
        self.proj = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in vit])
        # patch 16 -> 2 steps from 1/16 to 1/4; patch 14 -> 2 steps (1/14 -> ~1/3.5, then resized to 1/4).
        self.n_up = max(int(round(math.log2(patch_size / 4))), 0)
        self.up = nn.ModuleList([_conv_bn_relu(channels, channels) for _ in range(self.n_up)])
        self.fuse4 = _conv_bn_relu(channels + stem4, channels // 2)
        self.fuse2 = _conv_bn_relu(channels // 2 + stem2, channels // 4)
        self.out_channels = channels // 4

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        stem2, stem4, *vit = features
        x = sum(p(f) for p, f in zip(self.proj, vit))
        for block in self.up:
            x = block(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = F.interpolate(x, size=stem4.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse4(torch.cat([x, stem4], 1))
        x = F.interpolate(x, size=stem2.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse2(torch.cat([x, stem2], 1))


class ViTUNet(nn.Module):
    """ViT encoder + progressive-upsampling decoder with conv-stem skips; logits (B, 1, H, W).

    Args:
        encoder: A timm ``VisionTransformer`` built by :func:`create_vit`.
        in_channels: Input channels (must match the ViT's patch embedding).
        decoder_channels: Width of the decoder at the ViT resolution.
    """

    def __init__(self, encoder: nn.Module, in_channels: int, decoder_channels: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.stem = ConvStem(in_channels)
        self.indices = block_indices(len(encoder.blocks))
        patch = encoder.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        self.out_channels = self.stem.out_channels + [encoder.embed_dim] * len(self.indices)
        self.decoder = ViTDecoder(self.out_channels, patch, decoder_channels)
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, 1, 3, padding=1)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[stem 1/2, stem 1/4, ViT levels...]`` for input ``x``."""
        vit = self.encoder.forward_intermediates(x, indices=self.indices, output_fmt="NCHW", intermediates_only=True)
        return self.stem(x) + list(vit)

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Decoder + head; logits resized to ``size``."""
        out = self.segmentation_head(self.decoder(features))
        return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.forward_features(x), x.shape[-2:])
