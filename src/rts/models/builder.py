"""Build segmentation models from ``params.yaml``'s ``model`` section.

Every model maps (B, 3 + n_extra, H, W) z-scored input (RGB first) to logits (B, 1, H, W) at
input resolution. UNet++ / U-Net / DeepLabV3+ / SegFormer come from segmentation-models-pytorch
(``smp.create_model``); ``swin_unet`` is smp's U-Net on a timm hierarchical transformer encoder
(``tu-swin_*`` / ``tu-convnext_*``); ``unet3plus`` and ``vit_unet`` are written here.

Encoder weights (``model.encoder_weights``):

- ``null``: random initialisation.
- ``imagenet`` (or another library tag): loaded by the library itself (smp / timm download from
  the Hugging Face hub). If that fails (offline), :class:`WeightsError` says so and where a
  local file can be placed; there is never a silent random init.
- a path ending in ``.pth`` / ``.pt`` / ``.safetensors``: a state dict of the *RGB* encoder
  (``model.encoder.state_dict()`` of a 3-channel model; for smp encoders this is exactly the
  ``model.safetensors`` of the hub repo ``smp-hub/<encoder>.imagenet``; for ``vit_unet`` it is the
  timm ViT's state dict). Loaded with strict key and shape checking.

With pretrained weights and EXTRA channels, the model is built for RGB, loaded, and the first
convolution is then widened: RGB filters are kept exactly, each EXTRA input channel gets the mean
of the RGB filters (early fusion). The late-fusion EXTRA encoder starts from the same weights with
its first convolution replaced by the RGB-mean filter scaled by ``3 / n_extra``.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from segmentation_models_pytorch.encoders import get_encoder, get_encoder_names
from torch import nn

from rts.config import ConfigError, ModelConfig
from rts.models.foundation import FOUNDATION_ENCODERS, build_foundation_model, is_foundation_encoder
from rts.models.fusion import LateFusionModel
from rts.models.unet3plus import UNet3Plus
from rts.models.vit import ViTBranch, ViTUNet, create_vit
from rts.models.weights import WEIGHT_SUFFIXES, WeightsError, load_encoder_weights

log = logging.getLogger(__name__)

_SMP_ARCH = {"unet": "unet", "unetplusplus": "unetplusplus", "deeplabv3plus": "deeplabv3plus", "segformer": "segformer", "swin_unet": "unet"}
_SWIN_EXAMPLES = ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "convnext_tiny", "convnext_atto"]
_VIT_EXAMPLES = ["vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_tiny_patch16_224", "vit_small_patch16_224"]


# ------------------------------------------------------------------------------ encoder names


def _timm_name(name: str) -> str:
    return name.removeprefix("tu-")


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return f"did you mean {close}? " if close else ""


def resolve_encoder(arch: str, encoder: str) -> str:
    """Validate ``model.encoder`` for ``model.arch``; return the name the library expects.

    smp archs take smp encoder names or ``tu-<timm model>``; ``swin_unet`` takes a timm
    hierarchical model (``swin_*``, ``convnext_*``..., with or without ``tu-``; returned with
    ``tu-``); ``vit_unet`` takes a timm ViT (``vit_*``, returned without ``tu-``) or a foundation
    encoder name (:data:`rts.models.foundation.FOUNDATION_ENCODERS`, returned unchanged).

    Raises:
        ConfigError: (a ``ValueError``) naming ``model.encoder`` and suggesting valid names.
    """
    if is_foundation_encoder(encoder):
        if arch != "vit_unet":
            raise ConfigError(f"model.encoder: foundation encoder {encoder!r} needs model.arch: vit_unet, not {arch!r}")
        return encoder
    if arch == "vit_unet":
        name = _timm_name(encoder)
        if not (timm.is_model(name) and name.startswith("vit_")):
            vits = timm.list_models("vit_*")
            raise ConfigError(
                f"model.encoder: {encoder!r} is not a timm ViT or a foundation encoder for model.arch='vit_unet'; "
                f"{_suggest(name, vits + list(FOUNDATION_ENCODERS))}"
                f"examples: {_VIT_EXAMPLES}, foundation encoders: {list(FOUNDATION_ENCODERS)} (all ViTs: timm.list_models('vit_*'))"
            )
        return name
    if arch == "swin_unet":
        name = _timm_name(encoder)
        if not timm.is_model(name) or name.startswith("vit_"):
            choices = timm.list_models("swin*") + timm.list_models("convnext*")
            raise ConfigError(
                f"model.encoder: {encoder!r} is not a timm hierarchical encoder for model.arch='swin_unet'; "
                f"{_suggest(name, choices)}examples: {_SWIN_EXAMPLES} (see timm.list_models('swin*'))"
            )
        return f"tu-{name}"
    smp_names = get_encoder_names()
    if encoder in smp_names or (encoder.startswith("tu-") and timm.is_model(_timm_name(encoder))):
        return encoder
    raise ConfigError(
        f"model.encoder: unknown encoder {encoder!r} for model.arch={arch!r}; {_suggest(encoder, smp_names)}"
        f"valid: an smp encoder {smp_names}, or 'tu-<timm model name>' (timm.list_models())"
    )


def _encoder_kwargs(encoder: str) -> dict[str, Any]:
    # timm Swin checks the input size against its construction size unless told not to; with it
    # off, any multiple of 32 works (windows are padded), which progressive resizing needs.
    return {"strict_img_size": False} if _timm_name(encoder).startswith("swin") else {}


# ------------------------------------------------------------------------------ weights


def _weights_file(value: str | None) -> Path | None:
    if value is None:
        return None
    if value.endswith(WEIGHT_SUFFIXES) or "/" in value or "\\" in value:
        return Path(value)
    return None


def _library_tag(encoder: str, value: str | None) -> str | bool | None:
    """What to pass to smp/timm: None (no weights), True for timm encoders, else smp's tag."""
    if value is None or _weights_file(value) is not None:
        return None
    # timm models (tu- encoders, vit_unet's ViT) take pretrained=True; their weights tag is part of the name.
    return True if encoder.startswith(("tu-", "vit_")) else value


def _offline_hint(encoder: str, tag: Any) -> str:
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    if isinstance(tag, str) and tag in settings:
        repo = settings[tag]["repo_id"]
        return (
            f"download 'model.safetensors' from the Hugging Face repo {repo!r} on a machine with network, "
            f"copy it here and set model.encoder_weights to its path (e.g. weights/{encoder}.{tag}.safetensors), "
            "or pre-fill the Hugging Face cache (HF_HOME) and unset HF_HUB_OFFLINE"
        )
    return (
        f"save the timm model's state dict for {_timm_name(encoder)!r} (timm.create_model(..., pretrained=True) "
        "on a machine with network, then torch.save(model.state_dict(), path); for 'tu-' encoders save "
        "model.encoder.state_dict() of this project's model) and set model.encoder_weights to that .pth/.safetensors "
        "path, or pre-fill the Hugging Face cache (HF_HOME) and unset HF_HUB_OFFLINE"
    )


def _with_library_weights(build: Callable[[], nn.Module], encoder: str, tag: Any) -> nn.Module:
    if tag is None:
        return build()
    try:
        return build()
    except Exception as e:  # the library's own download/load failed: re-raise with the fix, never random-init
        raise WeightsError(
            f"model.encoder_weights: could not load pretrained weights {tag!r} for model.encoder={encoder!r} "
            f"({type(e).__name__}: {e}). The model hub is unreachable or the weights are not cached. To fix: "
            f"{_offline_hint(encoder, tag)}."
        ) from e


def adapt_input_channels(module: nn.Module, in_channels: int, *, keep_rgb: bool) -> None:
    """Widen/replace the first 3-input-channel convolution of ``module`` in place.

    Args:
        module: An encoder whose first ``nn.Conv2d`` with 3 input channels is its stem.
        in_channels: New number of input channels.
        keep_rgb: True (early fusion): keep the 3 RGB filters, add ``in_channels - 3`` copies of
            their mean. False (EXTRA-only encoder): ``in_channels`` copies of the RGB-mean filter
            scaled by ``3 / in_channels`` so the summed response keeps the RGB scale.
    """
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if conv is None:
        raise ValueError(f"{type(module).__name__}: no 3-channel input convolution to adapt")
    with torch.no_grad():
        weight = conv.weight.detach()
        mean = weight.mean(dim=1, keepdim=True)
        if keep_rgb:
            new = torch.cat([weight, mean.repeat(1, in_channels - 3, 1, 1)], dim=1)
        else:
            new = mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels)
    # Replace the parameter in place (not the module) so subclasses like static-same-padding convs survive.
    conv.weight = nn.Parameter(new.contiguous())
    conv.in_channels = in_channels
    if hasattr(module, "_in_channels"):
        module._in_channels = in_channels
    if getattr(module, "_out_channels", None) and module._out_channels[0] == 3:
        module._out_channels = [in_channels] + list(module._out_channels[1:])


# ------------------------------------------------------------------------------ building


def drop_unused_modules(net: nn.Module) -> list[str]:
    """Replace by ``nn.Identity`` the modules an encoder keeps but its forward never uses; returns
    their names.

    The ImageNet classifiers' last stage survives in some encoders: smp's ``efficientnet-*``
    (``_conv_head``, ``_bn1``), ``timm-efficientnet-*`` (``conv_head``, ``bn2``) and the timm ViT of
    ``vit_unet`` (its final ``norm``; the decoder reads intermediate blocks). Their parameters never
    receive a gradient, and DDP without ``find_unused_parameters`` then fails at the second step
    after the encoder is unfrozen ("Expected to have finished reduction in the prior iteration").
    Dropping them keeps one state-dict layout for training and inference; weights files and older
    packages that still hold them load (:func:`without_dropped_keys`).
    """
    from segmentation_models_pytorch.encoders.efficientnet import EfficientNetEncoder as SmpEfficientNet
    from segmentation_models_pytorch.encoders.timm_efficientnet import EfficientNetBaseEncoder as TimmEfficientNet

    unused = {SmpEfficientNet: ("_conv_head", "_bn1"), TimmEfficientNet: ("conv_head", "bn2")}
    dropped = []
    for name, module in list(net.named_modules()):
        attrs: tuple[str, ...] = next((a for cls, a in unused.items() if isinstance(module, cls)), ())
        if isinstance(module, (ViTUNet, ViTBranch)):
            module, name, attrs = module.encoder, f"{name}.encoder" if name else "encoder", ("norm",)
        for attr in attrs:
            if not isinstance(getattr(module, attr, None), (type(None), nn.Identity)):
                setattr(module, attr, nn.Identity())
                dropped.append(f"{name}.{attr}" if name else attr)
    return dropped


class _FP32Forward:
    """Mixin: run the module in float32 with autocast off (the logits head, see :func:`fp32_heads`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


_FP32_CLASSES: dict[type, type] = {}


def fp32_heads(net: nn.Module) -> None:
    """Make the 1-channel logit heads run in float32 under autocast (in place; state-dict keys unchanged).

    Under bf16 autocast a head convolution would return bf16 logits: 8 bits of mantissa quantise
    the probabilities that PR-AUC, early stopping and the calibrated thresholds are read from (and
    ``rts predict --amp`` would apply fp32-calibrated thresholds to them). The decoder still runs
    in bf16; only the last convolution (a few MFLOPs) runs in float32.
    """
    heads = [m for n, m in net.named_modules() if n.split(".")[-1] == "segmentation_head"]
    heads += [h for n, m in net.named_modules() if n.split(".")[-1] == "aux_heads" for h in m]
    for head in heads:
        cls = type(head)
        if issubclass(cls, _FP32Forward):
            continue
        if cls not in _FP32_CLASSES:
            _FP32_CLASSES[cls] = type(f"FP32{cls.__name__}", (_FP32Forward, cls), {"__module__": __name__})
        head.__class__ = _FP32_CLASSES[cls]


def _build_base(arch: str, encoder: str, in_channels: int, tag: Any, deep_supervision: bool, decoder_channels: Sequence[int] | None = None) -> nn.Module:
    kwargs = _encoder_kwargs(encoder)
    if decoder_channels is not None:  # smp U-Net / UNet++ (ModelConfig checks the arch)
        kwargs["decoder_channels"] = tuple(decoder_channels)
    match arch:
        case "unet3plus":
            return UNet3Plus(encoder, in_channels, encoder_weights=tag, deep_supervision=deep_supervision, **kwargs)
        case "vit_unet":
            return ViTUNet(create_vit(encoder, in_channels, pretrained=tag is not None), in_channels)
        case _:
            return smp.create_model(_SMP_ARCH[arch], encoder_name=encoder, encoder_weights=tag, in_channels=in_channels, classes=1, **kwargs)


def _build_extra_encoder(arch: str, encoder: str, in_channels: int, tag: Any, base: nn.Module) -> nn.Module:
    if arch == "vit_unet":
        return ViTBranch(create_vit(encoder, in_channels, pretrained=tag is not None), in_channels)
    # Same depth and output stride as the RGB encoder (DeepLabV3+ dilates to stride 16), so the pyramids align.
    depth = len(base.encoder.out_channels) - 1
    return get_encoder(encoder, in_channels=in_channels, depth=depth, weights=tag, output_stride=base.encoder.output_stride, **_encoder_kwargs(encoder))


def build_model(
    model: ModelConfig,
    *,
    in_channels: int = 3,
    n_extra: int = 0,
    extra_channels: Sequence[str] | None = None,
    encoder_overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the segmentation model described by ``model``.

    Args:
        model: The ``model`` params section (arch, encoder, encoder_weights, fusion, deep supervision).
        in_channels: ``3 + n_extra`` (checked).
        n_extra: Number of selected EXTRA channels (``len(data.extra_channels)``).
        extra_channels: Their names (``data.extra_channels``); foundation encoders use them to
            feed matching bands (``nir`` -> Prithvi's NIR). Other models ignore them.
        encoder_overrides: Test-only: timm kwargs shrinking a foundation encoder (``{"depth": 2}``).

    Returns:
        A module mapping (B, in_channels, H, W) to logits (B, 1, H, W); in train mode with
        ``model.deep_supervision`` (UNet3+) a tuple ``(logits, [aux_logits, ...])``.

    Raises:
        ConfigError: unknown encoder name, or inconsistent channel counts.
        WeightsError: requested weights could not be loaded (offline hub, bad file).
    """
    if n_extra < 0 or in_channels != 3 + n_extra:
        raise ConfigError(f"model: in_channels must be 3 (RGB) + n_extra, got in_channels={in_channels}, n_extra={n_extra}")
    encoder = resolve_encoder(model.arch, model.encoder)
    if is_foundation_encoder(encoder):
        net = build_foundation_model(
            encoder, weights=model.encoder_weights, n_extra=n_extra, extra_channels=extra_channels, fusion=model.fusion, overrides=encoder_overrides
        )
        fp32_heads(net)
        log.info("built %s (foundation encoder %s, weights %s, in_channels %d)", model.arch, encoder, model.encoder_weights, in_channels)
        return net
    file = _weights_file(model.encoder_weights)
    tag = _library_tag(encoder, model.encoder_weights)
    pretrained = model.encoder_weights is not None
    late = n_extra > 0 and model.fusion == "late"
    # Pretrained encoders are built for RGB, loaded, then adapted; random ones are built at the final width.
    base_in = 3 if (pretrained or late) else in_channels
    net = _with_library_weights(lambda: _build_base(model.arch, encoder, base_in, tag, model.deep_supervision, model.decoder_channels), encoder, tag)
    drop_unused_modules(net)
    if file is not None:
        load_encoder_weights(net.encoder, file)
    if n_extra and not late and pretrained:
        adapt_input_channels(net.encoder, in_channels, keep_rgb=True)
    if late:
        extra_in = 3 if pretrained else n_extra
        extra = _with_library_weights(lambda: _build_extra_encoder(model.arch, encoder, extra_in, tag, net), encoder, tag)
        drop_unused_modules(extra)
        extra_core = extra.encoder if isinstance(extra, ViTBranch) else extra
        if file is not None:
            load_encoder_weights(extra_core, file)
        if pretrained:
            adapt_input_channels(extra_core, n_extra, keep_rgb=False)
        rgb_ch = net.out_channels if isinstance(net, ViTUNet) else list(net.encoder.out_channels)
        extra_ch = list(extra.out_channels)
        # smp level 0 is the raw input (not a feature); zero-channel levels are placeholders of transformer encoders.
        first = 0 if isinstance(net, ViTUNet) else 1
        levels = [i for i in range(first, len(rgb_ch)) if rgb_ch[i] > 0 and extra_ch[i] > 0]
        if model.arch == "deeplabv3plus":  # its decoder reads level 2 (high-res skip) and the deepest level only
            levels = [i for i in levels if i in (2, len(rgb_ch) - 1)]
        net = LateFusionModel(net, extra, n_extra, levels, rgb_ch, extra_ch)
    fp32_heads(net)
    log.info("built %s (encoder %s, weights %s, in_channels %d, fusion %s)", model.arch, encoder, model.encoder_weights, in_channels, model.fusion if n_extra else "-")
    return net


# ------------------------------------------------------------------------------ training helpers


def model_outputs_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    outputs: torch.Tensor | tuple[torch.Tensor, Sequence[torch.Tensor]],
    target: torch.Tensor,
    valid: torch.Tensor,
    aux_weight: float,
) -> torch.Tensor:
    """Loss of a model output: plain logits, or ``(main, [aux...])`` from deep supervision.

    With deep supervision: ``loss(main) + aux_weight * mean_i loss(aux_i)`` (the mean keeps the
    auxiliary term's scale independent of the number of heads; ``model.deep_supervision_weight``).
    """
    if isinstance(outputs, tuple):
        main, aux = outputs
        total = loss_fn(main, target, valid)
        if aux and aux_weight > 0:
            total = total + aux_weight * torch.stack([loss_fn(a, target, valid) for a in aux]).mean()
        return total
    return loss_fn(outputs, target, valid)


def is_encoder_parameter(name: str) -> bool:
    """The freeze rule: a parameter belongs to the backbone if its name says so."""
    return "encoder" in name or "backbone" in name


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the encoder(s) (both encoders of a late-fusion model)."""
    return [p for n, p in model.named_parameters() if is_encoder_parameter(n)]


def decoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything else: decoder, heads, fusion blocks, ViT conv stem."""
    return [p for n, p in model.named_parameters() if not is_encoder_parameter(n)]


def set_encoder_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze (``True``) the encoder parameters."""
    for p in encoder_parameters(model):
        p.requires_grad_(trainable)


def param_groups(model: nn.Module, lr: float, encoder_lr_multiplier: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups ``[encoder (lr * multiplier), decoder (lr)]``, trainable parameters only."""
    enc = [p for p in encoder_parameters(model) if p.requires_grad]
    dec = [p for p in decoder_parameters(model) if p.requires_grad]
    groups = []
    if enc:
        groups.append({"params": enc, "lr": lr * encoder_lr_multiplier, "name": "encoder"})
    if dec:
        groups.append({"params": dec, "lr": lr, "name": "decoder"})
    return groups
