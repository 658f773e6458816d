"""Qt building blocks shared by the widgets: layer pickers kept in sync with the viewer,
a folder field with a browse button, number boxes, and the Start/Stop/progress/status block."""

from __future__ import annotations

from collections.abc import Callable

from napari.layers import Layer
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..config.finetune import DEVICES


class _WatchesLayers:
    """Calls ``self.refresh()`` when layers are added, removed, moved or renamed.

    Bound methods are connected (napari holds them weakly), never closures that would keep a
    deleted widget alive.
    """

    def _watch_layers(self, viewer) -> None:
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)

    def _on_layer_inserted(self, event) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()


class LayerCombo(QComboBox, _WatchesLayers):
    """The layers of one type, kept in sync with the viewer's layer list.

    ``none_text`` (e.g. "none") adds a first entry that stands for no layer (an optional choice).
    """

    layer_changed = Signal(object)  # the chosen layer or None

    def __init__(self, viewer, layer_type: type[Layer], parent: QWidget | None = None, *, none_text: str | None = None) -> None:
        super().__init__(parent)
        self._viewer, self._type, self._none = viewer, layer_type, none_text
        self._layers: list[Layer] = []
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit(self.layer()))
        self._watch_layers(viewer)
        self.refresh()

    @property
    def _offset(self) -> int:
        return 0 if self._none is None else 1

    def layer(self) -> Layer | None:
        i = self.currentIndex() - self._offset
        if 0 <= i < len(self._layers) and self._layers[i] in self._viewer.layers:
            return self._layers[i]
        return None

    def set_layer(self, layer: Layer | None) -> None:
        if layer is None and self._none is not None:
            self.setCurrentIndex(0)
        elif layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer) + self._offset)

    def refresh(self, *_) -> None:
        current = self.layer()
        self._layers = [layer for layer in self._viewer.layers if isinstance(layer, self._type)]
        self.blockSignals(True)
        self.clear()
        if self._none is not None:
            self.addItem(self._none)
        self.addItems([layer.name for layer in self._layers])
        if current in self._layers:
            self.setCurrentIndex(self._layers.index(current) + self._offset)
        self.blockSignals(False)
        if self.layer() is not current:
            self.layer_changed.emit(self.layer())


class LayerList(QListWidget, _WatchesLayers):
    """Several layers of one type (multi-select), kept in sync with the viewer."""

    def __init__(self, viewer, layer_type: type[Layer], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer, self._type = viewer, layer_type
        self._layers: list[Layer] = []
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setMaximumHeight(110)
        self._watch_layers(viewer)
        self.refresh()

    def selected_layers(self) -> list[Layer]:
        rows = sorted(self.row(item) for item in self.selectedItems())
        return [self._layers[r] for r in rows if self._layers[r] in self._viewer.layers]

    def select_layers(self, layers: list[Layer]) -> None:
        for row, layer in enumerate(self._layers):
            self.item(row).setSelected(layer in layers)

    def refresh(self, *_) -> None:
        chosen = self.selected_layers() if self._layers else []
        self._layers = [layer for layer in self._viewer.layers if isinstance(layer, self._type)]
        self.blockSignals(True)
        self.clear()
        self.addItems([layer.name for layer in self._layers])
        self.blockSignals(False)
        chosen = [layer for layer in chosen if layer in self._layers]
        if not chosen:  # default: the image layers selected in the viewer, else the first one
            chosen = [layer for layer in self._viewer.layers.selection if isinstance(layer, self._type)]
            chosen = chosen or self._layers[:1]
        self.select_layers(chosen)


class CheckableLayerList(QListWidget, _WatchesLayers):
    """The layers of one type, each with a tick box, kept in sync with the viewer.

    A layer keeps its tick while it stays in the viewer; a new layer is ticked when
    ``default_checked(layer)`` says so (default: always).
    """

    def __init__(self, viewer, layer_type: type[Layer], parent: QWidget | None = None,
                 default_checked: Callable[[Layer], bool] | None = None) -> None:
        super().__init__(parent)
        self._viewer, self._type = viewer, layer_type
        self._default = default_checked or (lambda layer: True)
        self._layers: list[Layer] = []
        self.setMaximumHeight(110)
        self._watch_layers(viewer)
        self.refresh()

    def layers(self) -> list[Layer]:
        return [layer for layer in self._layers if layer in self._viewer.layers]

    def checked_layers(self) -> list[Layer]:
        return [layer for row, layer in enumerate(self._layers)
                if self.item(row).checkState() == Qt.CheckState.Checked and layer in self._viewer.layers]

    def set_checked(self, layers: list[Layer]) -> None:
        """Tick exactly ``layers``."""
        for row, layer in enumerate(self._layers):
            self.item(row).setCheckState(Qt.CheckState.Checked if layer in layers else Qt.CheckState.Unchecked)

    def refresh(self, *_) -> None:
        ticked = {id(layer): self.item(row).checkState() == Qt.CheckState.Checked
                  for row, layer in enumerate(self._layers) if row < self.count()}
        layers = [layer for layer in self._viewer.layers if isinstance(layer, self._type)]
        self.blockSignals(True)
        self.clear()
        for layer in layers:
            item = QListWidgetItem(layer.name, self)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            checked = ticked.get(id(layer))
            if checked is None:
                checked = bool(self._default(layer))
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self._layers = layers
        self.blockSignals(False)


class FolderEdit(QWidget):
    """A folder path: a line edit plus a browse button."""

    changed = Signal(str)

    def __init__(self, placeholder: str, dialog_title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.line = QLineEdit(self)
        self.line.setPlaceholderText(placeholder)
        self.line.setClearButtonEnabled(True)
        self.line.textChanged.connect(self.changed)
        browse = QToolButton(self)
        browse.setText("…")
        browse.setToolTip("Choose a folder")
        browse.clicked.connect(self._browse)
        self._title = dialog_title
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.line)
        row.addWidget(browse)

    def path(self) -> str:
        return self.line.text().strip()

    def set_path(self, path: str) -> None:
        self.line.setText(str(path))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self._title, self.path())
        if folder:
            self.set_path(folder)


def spin_box(box, low, high, value, step=None, decimals=None):
    """Set up a QSpinBox / QDoubleSpinBox: range, step, decimals and value (in the order Qt needs)."""
    if decimals is not None:
        box.setDecimals(decimals)  # before the range and value, which it would round
    box.setRange(low, high)
    if step is not None:
        box.setSingleStep(step)
    box.setValue(value)
    return box


def preview_spin_box(parent: QWidget, default: float) -> QDoubleSpinBox:
    """Seconds between preview refreshes while training (0: none)."""
    box = spin_box(QDoubleSpinBox(parent), 0.0, 3600.0, default)
    box.setSuffix(" s")
    box.setToolTip("How often the preview layer is refreshed while training (0: no preview)")
    return box


def advanced_section(parent: QWidget, rows: list[tuple[str, QWidget]]) -> QCollapsible:
    """A folded "Advanced" section holding ``(label, widget)`` form rows."""
    section = QCollapsible("Advanced", parent)
    inner = QWidget()
    form = QFormLayout(inner)
    for label, widget in rows:
        form.addRow(label, widget)
    section.addWidget(inner)
    return section


def device_combo(parent: QWidget | None = None) -> QComboBox:
    combo = QComboBox(parent)
    combo.addItems(list(DEVICES))
    combo.setToolTip("auto: a CUDA GPU when there is one, else Apple MPS, else the CPU")
    return combo


class RunControls(QWidget):
    """Start and Stop buttons, a progress bar and a status line."""

    def __init__(self, start_text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.start_button = QPushButton(start_text, self)
        self.stop_button = QPushButton("Stop", self)
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

    def set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def set_progress(self, value: int, total: int, text: str) -> None:
        self.progress.setRange(0, max(1, int(total)))
        self.progress.setValue(min(int(value), max(1, int(total))))
        self.progress.setFormat(text)

    def show_steps(self, step: int, total: int, seconds: float, done_before: int = 0) -> None:
        """Progress of a training run with its speed and time left.

        ``seconds``: time since this run started; ``done_before``: steps done before it (a
        resumed run), which do not count for the speed.
        """
        done_now = step - done_before
        text = f"{step} / {total} steps"
        if done_now > 0 and seconds > 0:
            rate = done_now / seconds
            speed = f"{rate:.1f} steps/s" if rate >= 1 else f"{1 / rate:.1f} s/step"
            text += f" · {speed} · {format_seconds((total - step) / rate)} left"
        self.set_progress(step, total, text)


def format_seconds(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
