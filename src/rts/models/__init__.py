"""Model zoo (UNet++, U-Net, UNet3+, DeepLabV3+, SegFormer, Swin-UNet, ViT-UNet), fusion and EMA."""

from rts.models.builder import (
    WeightsError,
    adapt_input_channels,
    build_model,
    decoder_parameters,
    encoder_parameters,
    is_encoder_parameter,
    load_encoder_weights,
    model_outputs_loss,
    param_groups,
    resolve_encoder,
    set_encoder_trainable,
)
from rts.models.ema import ModelEMA, unwrap_model

__all__ = [
    "ModelEMA",
    "WeightsError",
    "adapt_input_channels",
    "build_model",
    "decoder_parameters",
    "encoder_parameters",
    "is_encoder_parameter",
    "load_encoder_weights",
    "model_outputs_loss",
    "param_groups",
    "resolve_encoder",
    "set_encoder_trainable",
    "unwrap_model",
]
