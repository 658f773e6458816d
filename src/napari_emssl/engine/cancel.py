"""Cooperative cancellation shared between a run and whoever started it."""

from __future__ import annotations

import threading


class CancelToken:
    """Set from any thread with :meth:`cancel`; a run checks :attr:`cancelled` every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
