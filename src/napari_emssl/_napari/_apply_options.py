"""How the Apply widget applies a model: the options rows (probabilities, z smoothing, pixel type, flips)."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QWidget

Z_AVERAGE = 0.25  # "smooth along z": neighbour weights 1:4:1 (docs/benchmarks.md, z-consistency)
TTA_CHOICES = (("auto: single images up to 4096 x 4096", None), ("on", True), ("off", False))


class PredictOptions:
    """The widgets of the :class:`~napari_emssl.config.PredictConfig` fields a user may change when applying."""

    def __init__(self, parent: QWidget) -> None:
        self.probabilities = QCheckBox("also add class probabilities", parent)
        self.z_average = QCheckBox("smooth along z (segmentation of a volume)", parent)
        self.z_average.setToolTip("Average each slice's class probabilities with its two neighbours (weights 1:4:1); "
                                  "for slices of one volume in order, not for stacks of unrelated images")
        self.keep_dtype = QCheckBox("keep the image's pixel type (restoration)", parent)
        self.keep_dtype.setToolTip("Round and clip restored values to the source's integer range instead of float32")
        self.tta = QComboBox(parent)
        for text, value in TTA_CHOICES:
            self.tta.addItem(text, value)
        self.tta.setToolTip("Restoration: average the 8 flips/rotations of each slice. Cleaner (0.4-1 dB on the benchmark "
                            "images) at eight times the prediction time; automatic: on for single images, off for stacks")

    def add_to(self, form: QFormLayout) -> None:
        form.addRow("", self.probabilities)
        form.addRow("", self.z_average)
        form.addRow("", self.keep_dtype)
        form.addRow("Average flips", self.tta)

    def show_files_mode(self, files: bool) -> None:
        """Word the probabilities option for results written to disk (``files``) or added as layers."""
        self.probabilities.setText("also write class probabilities (<name>_probabilities.tif)" if files
                                   else "also add class probabilities")

    def values(self) -> dict[str, Any]:
        """The chosen options as PredictConfig keyword arguments."""
        return dict(probabilities=self.probabilities.isChecked(), keep_dtype=self.keep_dtype.isChecked(),
                    tta=self.tta.currentData(), z_average=Z_AVERAGE if self.z_average.isChecked() else 0.0)
