"""U-Nets with ResNet encoders from segmentation_models_pytorch (random initialisation).

``encoder_weights=None`` always: nothing is downloaded. Parameter names are smp's own
(``encoder.*``, ``decoder.*``, ``segmentation_head.*``), so smp checkpoints load as they are.

The receptive fields are measured once, not computed: by gradients
(:func:`~napari_emssl.models.receptive_field.measure_input_intervals`: float64 copy with
positive weights, max pools as average pools) on a 4096 x 32 input, for the 32 output
rows of one stride period at the centre, widest interval kept (narrowest: 531 for
resnet18, 995 for resnet34). They do not depend on the channel counts. The tests re-measure
one position of ``unet_resnet18``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelFormatError
from .registry import register_model

__all__ = ["SMP_RECEPTIVE_FIELDS", "build_smp_unet"]

DEFAULT_DECODER_CHANNELS = [256, 128, 64, 32, 16]

# measured once (see module docstring); keyed by encoder name
SMP_RECEPTIVE_FIELDS = {"resnet18": 563, "resnet34": 1027}


def build_smp_unet(encoder: str, in_channels: int, out_channels: int, decoder_channels: Any):
    """``smp.Unet(encoder)`` with random weights and ``receptive_field``/``size_multiple`` set."""
    if (
        not isinstance(decoder_channels, (list, tuple))
        or len(decoder_channels) != 5
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in decoder_channels)
    ):
        raise ModelFormatError(f"decoder_channels must be a list of 5 positive integers, got {decoder_channels!r}")
    import segmentation_models_pytorch as smp  # slow import: only when building

    net = smp.Unet(
        encoder_name=encoder,
        encoder_weights=None,
        in_channels=in_channels,
        classes=out_channels,
        decoder_channels=list(decoder_channels),
    )
    net.receptive_field = SMP_RECEPTIVE_FIELDS[encoder]
    net.size_multiple = 32
    return net


def _register(encoder: str) -> None:
    def factory(in_channels: int, out_channels: int, decoder_channels: Any):
        return build_smp_unet(encoder, in_channels, out_channels, decoder_channels)

    register_model(
        f"unet_{encoder}",
        family="smp_unet",
        description=f"U-Net with a {encoder} encoder (segmentation_models_pytorch), receptive field measured",
        receptive_field=SMP_RECEPTIVE_FIELDS[encoder],
        size_multiple=32,
        default_kwargs={"decoder_channels": DEFAULT_DECODER_CHANNELS},
    )(factory)


for _encoder in SMP_RECEPTIVE_FIELDS:
    _register(_encoder)
