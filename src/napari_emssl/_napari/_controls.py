"""Qt building blocks shared by the widgets: layer pickers kept in sync with the viewer,
a folder field with a browse button, and the Start/Stop/progress/status block."""

from __future__ import annotations

from napari.layers import Layer
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

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
    """The layers of one type, kept in sync with the viewer's layer list."""

    layer_changed = Signal(object)  # the chosen layer or None

    def __init__(self, viewer, layer_type: type[Layer], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer, self._type = viewer, layer_type
        self._layers: list[Layer] = []
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit(self.layer()))
        self._watch_layers(viewer)
        self.refresh()

    def layer(self) -> Layer | None:
        i = self.currentIndex()
        if 0 <= i < len(self._layers) and self._layers[i] in self._viewer.layers:
            return self._layers[i]
        return None

    def set_layer(self, layer: Layer | None) -> None:
        if layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer))

    def refresh(self, *_) -> None:
        current = self.layer()
        self._layers = [layer for layer in self._viewer.layers if isinstance(layer, self._type)]
        self.blockSignals(True)
        self.clear()
        self.addItems([layer.name for layer in self._layers])
        if current in self._layers:
            self.setCurrentIndex(self._layers.index(current))
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


def format_seconds(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
