"""A small live plot of the training loss, drawn with QPainter (no matplotlib).

Points arrive every step; the widget redraws at most ``REDRAW_MS`` apart, and draws at
most one averaged point per pixel column, so a long run stays cheap to show.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

REDRAW_MS = 150
SMOOTHING = 0.9  # exponential moving average of the loss (the bold line)


class LossPlot(QWidget):
    """Loss per step (thin) and its moving average (bold), x axis from 0 to the total steps."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._smooth: list[float] = []
        self._total = 1
        self.foreground = QColor("#f0f1f2")
        self.background = QColor("#262930")
        self.raw_color = QColor("#6a7b9c")
        self.accent = QColor("#ff9f1a")
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.update)
        self.setToolTip("Training loss per step (thin) and its moving average (bold)")

    # ------------------------------------------------------------------ data

    @property
    def points(self) -> int:
        return len(self._steps)

    def reset(self, total_steps: int) -> None:
        self._steps.clear()
        self._losses.clear()
        self._smooth.clear()
        self._total = max(1, int(total_steps))
        self.update()

    def add(self, step: int, loss: float) -> None:
        if not np.isfinite(loss):
            return
        self._steps.append(int(step))
        self._losses.append(float(loss))
        prev = self._smooth[-1] if self._smooth else float(loss)
        self._smooth.append(SMOOTHING * prev + (1 - SMOOTHING) * float(loss))
        if not self._timer.isActive():
            self._timer.start()

    def set_colors(self, foreground: str, background: str, accent: str) -> None:
        self.foreground, self.background, self.accent = QColor(foreground), QColor(background), QColor(accent)
        raw = QColor(foreground)
        raw.setAlpha(90)
        self.raw_color = raw
        self.update()

    def follow_theme(self, viewer) -> None:
        """Take the colours of the viewer's theme, now and whenever it changes."""
        viewer.events.theme.connect(self._on_theme)  # a bound method: napari holds it weakly
        self.use_theme(viewer.theme)

    def _on_theme(self, event) -> None:
        self.use_theme(event.value)

    def use_theme(self, name: str) -> None:
        """Colours of the napari theme ``name`` (unknown names are ignored)."""
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(name)
            self.set_colors(theme.text.as_hex(), theme.background.as_hex(), "#ff9f1a")
        except (ValueError, KeyError, AttributeError, TypeError):
            pass

    # ------------------------------------------------------------------ drawing

    def _columns(self, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel column: x, mean loss, smoothed loss (only columns that hold steps)."""
        steps = np.asarray(self._steps, dtype=np.float64)
        losses = np.asarray(self._losses, dtype=np.float64)
        smooth = np.asarray(self._smooth, dtype=np.float64)
        cols = np.minimum((steps / self._total * (width - 1)).astype(np.int64), width - 1)
        counts = np.bincount(cols, minlength=width)
        keep = counts > 0
        mean = np.bincount(cols, weights=losses, minlength=width)[keep] / counts[keep]
        smean = np.bincount(cols, weights=smooth, minlength=width)[keep] / counts[keep]
        return np.nonzero(keep)[0].astype(np.float64), mean, smean

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self.background)
        metrics = painter.fontMetrics()
        left, right, top, bottom = 8, 8, metrics.height() + 6, metrics.height() + 6
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        grid = QColor(self.foreground)
        grid.setAlpha(40)
        painter.setPen(QPen(grid, 1))
        for frac in (0.0, 0.5, 1.0):
            y = plot.top() + frac * plot.height()
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        painter.setPen(self.foreground)
        if not self._steps:
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "the loss appears here while training")
            painter.end()
            return
        x, mean, smooth = self._columns(int(plot.width()))
        high = float(max(mean.max(), 1e-6)) * 1.05
        last = self._losses[-1]
        painter.drawText(QPointF(plot.left(), metrics.ascent() + 2),
                         f"loss {last:.3f} (smoothed {self._smooth[-1]:.3f})   step {self._steps[-1]} / {self._total}")
        painter.drawText(QPointF(plot.left(), self.height() - 4), "0")
        label = f"{high:.2f} at top"
        painter.drawText(QPointF(plot.right() - metrics.horizontalAdvance(label), self.height() - 4), label)

        def path(values: np.ndarray) -> QPainterPath:
            p = QPainterPath()
            ys = plot.bottom() - np.clip(values / high, 0, 1) * plot.height()
            p.moveTo(plot.left() + x[0], ys[0])
            for xi, yi in zip(x[1:], ys[1:]):
                p.lineTo(plot.left() + xi, yi)
            return p

        painter.setPen(QPen(self.raw_color, 1))
        painter.drawPath(path(mean))
        painter.setPen(QPen(self.accent, 2))
        painter.drawPath(path(smooth))
        painter.end()
