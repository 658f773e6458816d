"""The bridge between a core run (a generator of typed events) and a widget.

:meth:`RunBridge.start` runs ``make_run(token)`` - for example
``api.iter_finetune(image, labels, config, cancel=token)`` - in a napari generator
``thread_worker``. Each event reaches the main thread through the worker's ``yielded``
signal and goes to the handler registered for its type. Only plain data crosses threads.

Errors never leave the worker thread as exceptions: :func:`_guarded` turns them into a
:class:`Failure` event, so the user gets one napari notification (no traceback dialog),
an :class:`~napari_emssl.errors.EmsslError` shows its own message, anything else shows its
type and message (the traceback goes to the log), and the widget's ``on_done`` always runs.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import thread_worker
from napari.utils import notifications
from qtpy.QtCore import QEvent, QObject

from ..engine.cancel import CancelToken
from ..errors import EmsslError
from ._layers import docked_widgets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A run ended with an error (yielded by the worker instead of raising)."""

    message: str
    expected: bool  # an EmsslError: the message is written for the user
    details: str = ""  # traceback text of an unexpected error


def _guarded(make_run: Callable[[CancelToken], Iterator[Any]], token: CancelToken) -> Iterator[Any]:
    """Worker-thread side: iterate the run and turn any exception into a Failure event."""
    try:
        yield from make_run(token)
    except (EmsslError, FloatingPointError) as exc:  # FloatingPointError: the loss diverged (message for the user)
        yield Failure(str(exc), expected=True)
    except Exception as exc:  # noqa: BLE001 - shown to the user, never swallowed silently
        yield Failure(f"{type(exc).__name__}: {exc}", expected=False, details=traceback.format_exc())


def show_error(message: str) -> None:
    notifications.show_error(message)


def show_warning(message: str) -> None:
    notifications.show_warning(message)


def show_info(message: str) -> None:
    notifications.show_info(message)


def report_failure(failure: Failure, doing: str) -> str:
    """Notify the user of a failed run; return the text for the widget's status line."""
    if failure.expected:
        show_error(failure.message)
        return failure.message
    log.error("napari-emssl: unexpected error while %s\n%s", doing, failure.details)
    text = f"Unexpected error while {doing}: {failure.message}"
    show_error(text)
    return text


class _Job:
    """What a closing widget needs to stop its run; plain Python, no Qt (usable during teardown)."""

    def __init__(self) -> None:
        self.token: CancelToken | None = None
        self.worker = None
        self.run: Iterator[Any] | None = None

    def abandon(self, *_: Any) -> None:
        if self.token is not None:
            self.token.cancel()
        if self.worker is not None:
            self.worker.quit()

    def close_run(self, *_: Any) -> None:
        """Close the run's generator once its worker has stopped, so its cleanup runs now: a worker that
        quits stops pulling events without closing the generator (a stopped batch would otherwise keep
        its temporary output file until garbage collection)."""
        run, self.run = self.run, None
        if run is not None:
            try:
                run.close()
            except Exception:  # noqa: BLE001 - cleanup after the run; logged, never raised into Qt
                log.exception("napari-emssl: error while closing a stopped run")


class RunBridge(QObject):
    """Runs one core generator at a time and dispatches its events by type on the main thread.

    ``handlers`` maps event types (``StepEnd``, ``RunFinished``, :class:`Failure`, ...) to
    callables; events of other types are ignored. ``on_done`` runs once the worker has ended,
    however it ended. When ``parent`` is destroyed the run is stopped.
    """

    def __init__(self, handlers: Mapping[type, Callable[[Any], None]], on_done: Callable[[], None], parent: QObject):
        super().__init__(parent)
        self._handlers = dict(handlers)
        self._on_done = on_done
        self._job = _Job()
        job = self._job
        parent.destroyed.connect(lambda *_: job.abandon())

    @property
    def running(self) -> bool:
        return self._job.worker is not None

    @property
    def token(self) -> CancelToken | None:
        return self._job.token

    @property
    def worker(self):
        return self._job.worker

    def start(self, make_run: Callable[[CancelToken], Iterator[Any]]) -> None:
        if self.running:
            raise RuntimeError("a run is already going on")
        token = CancelToken()
        run = _guarded(make_run, token)

        def pull() -> Iterator[Any]:
            yield from run

        worker = thread_worker(pull, start_thread=False, ignore_errors=True)()
        worker.yielded.connect(self._dispatch)
        worker.finished.connect(self._job.close_run)  # a plain object's method: runs even when the widget is gone
        worker.finished.connect(self._finished)
        self._job.token, self._job.worker, self._job.run = token, worker, run
        worker.start()

    def stop(self) -> None:
        """Ask the run to stop after its current step; it then yields RunCancelled with what it kept."""
        if self._job.token is not None:
            self._job.token.cancel()

    def abandon(self) -> None:
        """Stop the run and drop whatever it still yields (the widget is going away)."""
        self._job.abandon()

    def _dispatch(self, event: Any) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _finished(self) -> None:
        self._job.worker = None
        self._job.token = None
        self._on_done()


class StopsRunOnClose:
    """Mixin for a widget with a ``bridge`` (:class:`RunBridge`): its run stops when the widget
    is removed from the viewer (the dock's close button) or closed (the viewer closes).

    List it before ``QWidget``: ``class MyWidget(StopsRunOnClose, QWidget)``.
    """

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and hasattr(self, "bridge"):
            self.bridge.abandon()  # removed from the viewer (dock closed)
        return super().event(event)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if hasattr(self, "bridge"):
            self.bridge.abandon()
        super().closeEvent(event)


class EndsTrainingRun:
    """Mixin for a training widget with ``controls`` (:class:`RunControls`), a ``bridge``
    (:class:`RunBridge`), a ``_prepare()`` that checks the input and a ``_run`` dict: what
    starting, stopping and ending a run share in every such widget. ``run_noun`` names the
    run in failure messages ("fine-tuning", "pretraining"), ``kept_on_stop`` says what Stop keeps."""

    run_noun = "the run"
    kept_on_stop = "what was trained so far is kept"

    def _prepared_run(self) -> dict | None:
        """``_prepare()``'s run, or None when a run is going or the input is refused (said in a dialog and the status)."""
        if self.bridge.running:
            return None
        try:
            return self._prepare()
        except EmsslError as exc:
            show_error(str(exc))
            self.controls.set_status(str(exc))
            return None

    def stop(self) -> None:
        """Stop after the current step; the run keeps what it trained so far."""
        if self.bridge.running and self._run is not None and not self._run.get("ended"):
            self.bridge.stop()
            self.controls.stop_button.setEnabled(False)
            self.controls.set_status(f"Stopping after the current step… ({self.kept_on_stop})")

    def _refresh_docked(self, method: str) -> None:
        """Call ``method()`` on every other widget docked in this viewer that has it (e.g. new models to offer)."""
        for widget in docked_widgets(self.viewer):
            refresh = getattr(widget, method, None)
            if widget is not self and callable(refresh):
                refresh()

    def _on_failure(self, failure: Failure) -> None:
        self._end_run()
        self.controls.set_status(report_failure(failure, self.run_noun))

    def _end_run(self) -> None:
        if self._run is not None:
            self._run["ended"] = True
        self.controls.stop_button.setEnabled(False)

    def _on_done(self) -> None:
        self.controls.set_running(False)
        self._run = None
