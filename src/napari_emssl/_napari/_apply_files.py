"""The Apply widget's "files" mode: a folder or glob of images in, results written to disk.

Thin: the panel collects the choices (inputs, output folder, format, overwrite) and the
texts for progress and the summary; :func:`napari_emssl.batch.iter_predict_files` does the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QWidget

from ..batch import BatchSummary, expand_inputs
from ..engine.events import FileEnded, FileStarted
from ..errors import InputError
from ._controls import FolderEdit


@dataclass(frozen=True)
class FilesJob:
    inputs: list[str]
    out_dir: str | None
    fmt: str
    overwrite: bool


class FilesPanel:
    """Inputs (a folder, a file or a glob such as ``/data/run1/*.tif``), output folder, format, overwrite:
    rows for the Apply widget's own form (``rows``), so they line up with its other rows."""

    def __init__(self, parent: QWidget) -> None:
        self.inputs = FolderEdit("folder, file or glob, e.g. /data/run1/*.tif", "Folder of images", parent)
        self.inputs.setToolTip("Every TIFF/PNG/JPEG image (and OME-Zarr folder) in a folder, one file, or a glob pattern")
        self.out_dir = FolderEdit("output folder (empty: beside each input)", "Output folder", parent)
        self.out_dir.setToolTip("Results are named after their inputs; empty: written beside each input as "
                                "<name>_segmentation.tif, <name>_denoised.tif, ...")
        self.fmt = QComboBox(parent)
        self.fmt.addItem("TIFF", "tif")
        self.fmt.addItem("OME-Zarr", "zarr")
        self.overwrite = QCheckBox("overwrite results that exist (else: skip those inputs)", parent)
        self.rows = (("Inputs", self.inputs), ("Output", self.out_dir), ("Format", self.fmt), ("", self.overwrite))

    def add_to(self, form: QFormLayout) -> None:
        for label, widget in self.rows:
            form.addRow(label, widget)

    def set_visible(self, form: QFormLayout, visible: bool) -> None:
        for _, widget in self.rows:
            form.setRowVisible(widget, visible)

    def job(self) -> FilesJob:
        """The choices, checked on the main thread (the inputs must match at least one image)."""
        text = self.inputs.path()
        if not text:
            raise InputError("Choose the images to apply the model to: a folder, a file or a glob such as /data/*.tif.")
        expand_inputs([text])  # raises with a clear message when nothing matches
        out = self.out_dir.path() or None
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise InputError(f"The output '{out}' is a file; choose a folder.")
        return FilesJob(inputs=[text], out_dir=out, fmt=self.fmt.currentData(), overwrite=self.overwrite.isChecked())


def file_progress_text(event: FileStarted | FileEnded) -> str:
    return f"file {event.index + 1} / {event.count}: {Path(event.path).name}"


def summary_text(summary: BatchSummary, stopped: bool = False) -> str:
    """One status line for a finished (or stopped) batch, naming what failed and why."""
    text = ("Stopped: " if stopped else "Batch done: ") + summary.line()
    if summary.failed:
        shown = "; ".join(f"{Path(path).name}: {reason}" for path, reason in summary.failed[:3])
        more = f" (and {len(summary.failed) - 3} more)" if len(summary.failed) > 3 else ""
        text += f". Failed: {shown}{more}"
    return text
