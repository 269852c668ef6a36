"""UNet 3+ (Huang et al., ICASSP 2020): full-scale skip connections on an smp encoder.

Each decoder node at scale ``l`` gathers *all* scales: shallower encoder maps max-pooled down to
``l``, the same-scale encoder map, and every deeper decoder node (and the bottleneck) upsampled
bilinearly to ``l``; each branch is a 3x3 conv to ``cat_channels``, the branches are concatenated
and fused by a 3x3 conv-BN-ReLU to ``5 * cat_channels``. The smp encoder's stride-2 level is the
shallowest scale, so the main head works at 1/2 resolution and is upsampled to the input size.

Deep supervision (optional): extra 1-channel heads on the decoder nodes at 1/4, 1/8, 1/16 and on
the bottleneck at 1/32, upsampled to the input size; in train mode the model then returns
``(main_logits, [aux_logits, ...])`` (see ``rts.models.builder.model_outputs_loss`` for the
weighting). The paper's classification-guided module is not implemented: the tile-level
"contains RTS" signal is left to the sampler and the pixel loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Max-pool down (encoder maps, as in the paper) or bilinear-upsample to ``size``."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h > size[0]:
        return F.adaptive_max_pool2d(x, tuple(size))
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UNet3PlusDecoder(nn.Module):
    """Full-scale decoder over encoder levels 1..5 (strides 2..32).

    Args:
        encoder_channels: ``encoder.out_channels`` (6 entries, level 0 = the input itself; levels
            with 0 channels, the dummy stride-2 level of transformer encoders, are skipped).
        cat_channels: Channels of each full-scale branch (64 in the paper).
    """

    def __init__(self, encoder_channels: Sequence[int], cat_channels: int = 64) -> None:
        super().__init__()
        if len(encoder_channels) != 6:
            raise ValueError(f"UNet3+ needs an encoder of depth 5 (6 feature levels), got channels {list(encoder_channels)}")
        self.enc_ch = list(encoder_channels)
        self.up_channels = 5 * cat_channels
        self.branches = nn.ModuleDict()
        self.fuse = nn.ModuleDict()
        for node in (4, 3, 2, 1):
            n = 0
            for src in range(1, 6):
                if src <= node or src == 5:
                    ch = self.enc_ch[src]  # encoder map (shallower / same scale, or the bottleneck)
                else:
                    ch = self.up_channels  # deeper decoder node
                if ch == 0:
                    continue
                self.branches[f"{node}_{src}"] = _conv_bn_relu(ch, cat_channels)
                n += 1
            self.fuse[str(node)] = _conv_bn_relu(n * cat_channels, self.up_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return ``[d1, d2, d3, d4, e5]`` (decoder nodes from shallow to deep, then the bottleneck)."""
        dec: dict[int, torch.Tensor] = {5: features[5]}
        for node in (4, 3, 2, 1):
            size = features[node].shape[-2:]
            parts = []
            for src in range(1, 6):
                key = f"{node}_{src}"
                if key not in self.branches:
                    continue
                x = features[src] if (src <= node or src == 5) else dec[src]
                parts.append(self.branches[key](_resize_to(x, size)))
            dec[node] = self.fuse[str(node)](torch.cat(parts, dim=1))
        return [dec[1], dec[2], dec[3], dec[4], dec[5]]


class UNet3Plus(nn.Module):
    """UNet 3+ with an smp encoder; logits (B, 1, H, W) at input resolution.

    Args:
        encoder_name: smp encoder name (``resnet18``, ``efficientnet-b7``, ``tu-<timm>``...).
        in_channels: Input channels.
        encoder_weights: Passed to ``smp.encoders.get_encoder`` (None = random init).
        deep_supervision: Return ``(main, [aux...])`` in train mode.
        cat_channels: Channels per full-scale branch.
        encoder_kwargs: Extra keyword arguments for the encoder (e.g. timm options).
    """

    def __init__(
        self,
        encoder_name: str,
        in_channels: int = 3,
        encoder_weights: str | bool | None = None,
        deep_supervision: bool = False,
        cat_channels: int = 64,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        self.encoder = get_encoder(encoder_name, in_channels=in_channels, depth=5, weights=encoder_weights, **encoder_kwargs)
        self.decoder = UNet3PlusDecoder(self.encoder.out_channels, cat_channels)
        up = self.decoder.up_channels
        self.segmentation_head = nn.Conv2d(up, 1, 3, padding=1)
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.aux_heads = nn.ModuleList(
                [nn.Conv2d(up, 1, 3, padding=1) for _ in range(3)] + [nn.Conv2d(self.encoder.out_channels[5], 1, 3, padding=1)]
            )

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Decoder + heads on encoder ``features``; outputs resized to ``size``."""
        nodes = self.decoder(features)
        up = lambda t: F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)  # noqa: E731
        main = up(self.segmentation_head(nodes[0]))
        if self.deep_supervision and self.training:
            return main, [up(head(node)) for head, node in zip(self.aux_heads, nodes[1:])]
        return main

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        return self.decode(self.encoder(x), x.shape[-2:])
