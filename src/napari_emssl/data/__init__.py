"""Data preparation: validation, normalisation, sparse labels, patch sampling, augmentation, tiling.

Import from the submodules (``napari_emssl.data.patches`` ...); this file stays light.
"""

IGNORE_INDEX = -100
"""Target value of unpainted pixels; the loss ignores it (``torch.nn.CrossEntropyLoss`` default)."""

__all__ = ["IGNORE_INDEX"]
