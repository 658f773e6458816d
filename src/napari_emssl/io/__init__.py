"""Reading and writing image files (no napari/Qt here)."""

from .tiff import ImageMeta, read_image, write_image

__all__ = ["ImageMeta", "read_image", "write_image"]
