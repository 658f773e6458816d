"""napari-emssl: self-supervised deep learning for electron microscopy."""

__version__ = "0.1.0"
