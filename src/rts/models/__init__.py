"""Model zoo (UNet++, U-Net, UNet3+, DeepLabV3+, SegFormer, Swin-UNet, ViT-UNet), foundation encoders, fusion and EMA."""

from rts.models.builder import (
    adapt_input_channels,
    build_model,
    decoder_parameters,
    encoder_parameters,
    is_encoder_parameter,
    model_outputs_loss,
    param_groups,
    resolve_encoder,
    set_encoder_trainable,
)
from rts.models.ema import ModelEMA, unwrap_model
from rts.models.foundation import FOUNDATION_ENCODERS, is_foundation_encoder
from rts.models.weights import WeightsError, load_encoder_weights

__all__ = [
    "FOUNDATION_ENCODERS",
    "ModelEMA",
    "WeightsError",
    "adapt_input_channels",
    "build_model",
    "decoder_parameters",
    "encoder_parameters",
    "is_encoder_parameter",
    "is_foundation_encoder",
    "load_encoder_weights",
    "model_outputs_loss",
    "param_groups",
    "resolve_encoder",
    "set_encoder_trainable",
    "unwrap_model",
]
