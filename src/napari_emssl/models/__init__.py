"""Network architectures by name: ``create_model``, ``list_models``, ``model_info``.

Importing this package registers every architecture; timm and segmentation_models_pytorch
are imported only when one of their models is built.
"""

from .registry import ModelInfo, create_model, list_models, model_info, register_model
from . import hrnet, resunet, smp_unet, vit  # noqa: F401  (registration side effect)

__all__ = ["create_model", "list_models", "model_info", "ModelInfo", "register_model", "DEFAULT_SEGMENT_ARCH"]

#: architecture used for segmentation when none is chosen (base_channels 16 by default)
DEFAULT_SEGMENT_ARCH = "resunet_b3_rf96"
