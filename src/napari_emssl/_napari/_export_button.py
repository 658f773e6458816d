"""An "Export…" button: the trained model as a bioimage.io package, ONNX or TorchScript, in a worker thread.

Thin: :func:`napari_emssl.export.export` does the work (and checks the exported file against
PyTorch); the button asks for the format and the file, and reports the result as a notification.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari.qt.threading import thread_worker
from qtpy.QtWidgets import QFileDialog, QInputDialog, QPushButton, QWidget

from ..engine.model_dir import TrainedModel
from ._worker import show_error, show_info

FORMAT_FILES = {"bioimageio": ("bioimage.io package (*.zip)", ".zip"), "onnx": ("ONNX (*.onnx)", ".onnx"),
                "torchscript": ("TorchScript (*.pt)", ".pt")}


class ExportButton(QPushButton):
    """Exports ``model()`` (the widget's trained model) when clicked; disabled while there is none."""

    def __init__(self, model: Callable[[], TrainedModel | None], parent: QWidget | None = None) -> None:
        super().__init__("Export…", parent)
        self.setToolTip("Share the trained model: a bioimage.io package (with test data and a cover), ONNX or TorchScript")
        self.setEnabled(False)
        self._model = model
        self.worker = None
        self.last_report = None
        self.clicked.connect(lambda: self.export())

    def export(self, fmt: str | None = None, path: str | None = None) -> bool:
        """Export in a worker thread (asks for ``fmt`` and ``path`` when None); False when nothing was started."""
        model = self._model()
        if model is None or self.worker is not None:
            return False
        if fmt is None:
            fmt, ok = QInputDialog.getItem(self, "Export the model", "Format", list(FORMAT_FILES), 0, False)
            if not ok:
                return False
        if path is None:
            pattern, suffix = FORMAT_FILES[fmt]
            path, _ = QFileDialog.getSaveFileName(self, "Export the model to", f"model{suffix}", pattern)
            if not path:
                return False
        from ..export import export

        worker = thread_worker(export, start_thread=False)(model, fmt, path)
        worker.returned.connect(self._done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.setEnabled(False)
        self.setText("Exporting…")
        worker.start()
        return True

    def _done(self, report) -> None:
        self.last_report = report
        checked = ", ".join(f"{k}: max difference {v:.1e}" for k, v in (report.max_abs_diff or {}).items())
        status = f", validation {report.status}" if report.status else ""
        show_info(f"Model exported to {Path(report.path)} ({report.format}{status}{'; ' + checked if checked else ''})")

    def _failed(self, exc: Exception) -> None:
        self.last_report = None
        show_error(f"Export failed: {exc}")

    def _finished(self) -> None:
        self.worker = None
        self.setText("Export…")
        self.setEnabled(self._model() is not None)
