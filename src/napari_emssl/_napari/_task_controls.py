"""The task part of the Fine-tune widget: what to learn, and the rows that only some tasks need.

Segmentation needs a Labels layer; the restoration tasks an optional paired target image
layer; super-resolution its factor. :class:`TaskRows` owns those controls and shows only
the rows that the chosen task uses.
"""

from __future__ import annotations

from napari.layers import Image
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QWidget

from ..config import FACTORS, LEAK_AUTO, FinetuneConfig
from ._controls import LayerCombo

TASK_CHOICES = (
    ("segmentation (paint labels)", "segment"),
    ("denoising", "denoise"),
    ("noise & background removal", "bgremove"),
    ("super-resolution", "superres"),
)
HINTS = {
    "segment": "paint 1 = background, 2, 3, … = structures",
    "denoise": "learns from the noisy image itself (blind spot); a clean target image makes it paired",
    "bgremove": "synthetic atom-column pairs matched to the image; a background-free target makes it paired",
    "superres": "learns from the image downscaled further (atomic lattices: synthetic lattices); a high-resolution "
                "target makes it paired",
}
# what a hidden pixel shows in self-supervised denoising (FinetuneConfig.mask_replace)
MASK_CHOICES = (
    ("mean of its neighbours (fine detail)", "mean"),
    ("one neighbour (smooth images)", "neighbour"),
)
MASK_TIP = ("Self-supervised denoising hides pixels from the network. Showing the mean of the neighbours lets the "
            "network learn how much of each pixel's own value to use: better on images with fine detail. One neighbour "
            "hides them completely: better on smooth images such as detector images (docs/benchmarks.md).")
# how self-supervised denoising learns (FinetuneConfig.denoise_loss)
LOSS_CHOICES = (
    ("re-visible (blind spot + own value)", "re-visible"),
    ("blind spot only (faster)", "blind-spot"),
)
LOSS_TIP = ("The blind-spot loss trains the network only on pixels it cannot see. The re-visible loss adds a term "
            "that teaches it how to use each pixel's own value, which it does see when applied: better on 3 of the 4 "
            "benchmark images (up to +0.65 dB, -0.19 on one), training takes 35-50 % longer (docs/benchmarks.md).")
MEAN_TIP = ("After denoising, add back the Gaussian low-pass (this sigma, in pixels) of what was removed, so the result "
             "keeps the input's local brightness: the noise averages out, a slow offset of the network does not. "
             "On the 8 benchmark images -0.00 to +0.50 dB, most on smooth images (docs/benchmarks.md). 0: off.")
# how much of each pixel's own weight self-supervised denoising takes out after prediction (FinetuneConfig.leak_correction)
LEAK_CHOICES = (
    ("auto: chosen per image", LEAK_AUTO),
    ("off", 0.0),
    ("0.25", 0.25),
    ("0.5", 0.5),
    ("0.75", 0.75),
    ("1: from the neighbours alone", 1.0),
)
LEAK_TIP = ("After denoising, take out a share of the weight the network gives each pixel's own value (its own noise), "
            "measured with one more pass of the network (prediction takes one pass more per slice). auto: the share "
            "Stein's unbiased risk estimate expects to be best for each slice, from 0 to 0.75 (high on smooth images, "
            "low on images with detail at the pixel scale; docs/benchmarks.md, 'Leak correction'). 0: off; 1: each "
            "pixel from its neighbours alone.")
# what self-supervised super-resolution learns from (FinetuneConfig.lattice_pairs)
PAIRS_CHOICES = (
    ("the image downscaled further", False),
    ("synthetic atom-column lattices", True),
)
PAIRS_TIP = ("Without a target, super-resolution learns from the image downscaled once more, assuming it looks alike one "
             "scale up. An atomic lattice does not (its columns keep their size), and there that loses against bicubic "
             "upsampling. For atomic-resolution images, choose synthetic atom-column lattices matched to the image's "
             "lattice period: +0.8 to +0.9 dB over bicubic on two STEM lattices (docs/benchmarks.md).")
TARGET_TIPS = {
    "denoise": "Optional: a clean (e.g. high-dose) image of the same field of view, in the image's intensity units",
    "bgremove": "Optional: the same field of view without noise and background, in the image's intensity units",
    "superres": "Optional: a high-resolution image of the same field of view, factor times larger in Y and X",
}


class TaskRows(QWidget):
    """Task combo, target layer and factor; :meth:`add_to` puts them into a form."""

    task_changed = Signal(str)

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.task_combo = QComboBox(parent)
        for text, value in TASK_CHOICES:
            self.task_combo.addItem(text, value)
        self.target_combo = LayerCombo(viewer, Image, parent, none_text="none (from the image alone)")
        self.factor_combo = QComboBox(parent)
        for f in FACTORS:
            self.factor_combo.addItem(f"x{f}", f)
        self.mask_combo = _choice_combo(parent, MASK_CHOICES, FinetuneConfig.mask_replace, MASK_TIP)
        self.loss_combo = _choice_combo(parent, LOSS_CHOICES, FinetuneConfig.denoise_loss, LOSS_TIP)
        self.mean_spin = QDoubleSpinBox(parent)
        self.mean_spin.setRange(0.0, 1024.0)
        self.mean_spin.setDecimals(0)
        self.mean_spin.setSingleStep(4.0)
        self.mean_spin.setSuffix(" px")
        self.mean_spin.setSpecialValueText("off")
        self.mean_spin.setValue(FinetuneConfig.mean_correction)
        self.mean_spin.setToolTip(MEAN_TIP)
        self._mean_label = QLabel("Mean correction", parent)
        self.leak_combo = _choice_combo(parent, LEAK_CHOICES, FinetuneConfig.leak_correction, LEAK_TIP)
        self._leak_label = QLabel("Leak correction", parent)
        self._mask_label = QLabel("Hidden pixels show", parent)
        self._loss_label = QLabel("Loss", parent)
        self.hint = QLabel(parent)
        self.hint.setWordWrap(True)
        self._target_label = QLabel("Target", parent)
        self._factor_label = QLabel("Factor", parent)
        self.pairs_combo = _choice_combo(parent, PAIRS_CHOICES, FinetuneConfig.lattice_pairs, PAIRS_TIP)
        self._pairs_label = QLabel("Learn from", parent)
        self.task_combo.currentIndexChanged.connect(lambda _: self._update())

    def add_to(self, form: QFormLayout, labels_row_widgets: tuple[QWidget, ...]) -> None:
        """Add the task row first, the target and factor rows after it; ``labels_row_widgets`` are hidden unless segmenting."""
        form.insertRow(0, "Task", self.task_combo)
        self._labels_widgets = labels_row_widgets
        form.addRow(self._target_label, self.target_combo)
        form.addRow(self._factor_label, self.factor_combo)
        form.addRow(self._pairs_label, self.pairs_combo)
        form.addRow(self._mask_label, self.mask_combo)
        form.addRow(self._loss_label, self.loss_combo)
        form.addRow(self._leak_label, self.leak_combo)
        form.addRow(self._mean_label, self.mean_spin)
        self._update()

    def task(self) -> str:
        return self.task_combo.currentData()

    def set_task(self, task: str) -> None:
        self.task_combo.setCurrentIndex(self.task_combo.findData(task))

    def factor(self) -> int:
        return int(self.factor_combo.currentData()) if self.task() == "superres" else 1

    def mask_replace(self) -> str:
        """What a hidden pixel shows in self-supervised denoising (the default for the other tasks)."""
        return self.mask_combo.currentData() if self.task() == "denoise" else FinetuneConfig.mask_replace

    def denoise_loss(self) -> str:
        """The self-supervised denoising loss (the default for the other tasks)."""
        return self.loss_combo.currentData() if self.task() == "denoise" else FinetuneConfig.denoise_loss

    def mean_correction(self) -> float:
        """The mean-correction sigma (px) of self-supervised denoising (the default for the other tasks)."""
        return float(self.mean_spin.value()) if self.task() == "denoise" else FinetuneConfig.mean_correction

    def leak_correction(self) -> float | str:
        """The share of the own-pixel weight taken out in self-supervised denoising, or "auto" (the default for the other tasks)."""
        return self.leak_combo.currentData() if self.task() == "denoise" else FinetuneConfig.leak_correction

    def lattice_pairs(self) -> bool:
        """Whether self-supervised super-resolution learns from synthetic lattices (False for the other tasks)."""
        return bool(self.pairs_combo.currentData()) if self.task() == "superres" else False

    def target_layer(self):
        return self.target_combo.layer() if self.task() != "segment" else None

    def default_steps(self) -> int:
        return FinetuneConfig(task=self.task()).default_steps

    def _update(self) -> None:
        task = self.task()
        restoration = task != "segment"
        for widget in getattr(self, "_labels_widgets", ()):
            widget.setVisible(not restoration)
        self._target_label.setVisible(restoration)
        self.target_combo.setVisible(restoration)
        self.target_combo.setToolTip(TARGET_TIPS.get(task, ""))
        self._factor_label.setVisible(task == "superres")
        self.factor_combo.setVisible(task == "superres")
        self._pairs_label.setVisible(task == "superres")
        self.pairs_combo.setVisible(task == "superres")
        for widget in (self._mask_label, self.mask_combo, self._loss_label, self.loss_combo, self._mean_label, self.mean_spin,
                       self._leak_label, self.leak_combo):
            widget.setVisible(task == "denoise")
        self.hint.setText(HINTS[task])
        self.task_changed.emit(task)


def _choice_combo(parent: QWidget | None, choices: tuple[tuple[str, object], ...], default: object, tip: str) -> QComboBox:
    """A combo of ``(text, value)`` choices with ``default`` selected."""
    combo = QComboBox(parent)
    for text, value in choices:
        combo.addItem(text, value)
    combo.setCurrentIndex(combo.findData(default))
    combo.setToolTip(tip)
    return combo
