"""Errors that carry a message meant for the microscopist.

The CLI prints ``str(error)`` as one line and exits 1; the napari widgets show it as a
notification. Anything else that escapes is a bug and is shown with its traceback.
"""


class EmsslError(Exception):
    """Base class of every error whose message is written for the user."""


class InputError(EmsslError, ValueError):
    """Bad input data: wrong shape, dtype, NaN values, unreadable file, mismatched labels."""


class ModelFormatError(EmsslError, ValueError):
    """A model directory that cannot be loaded: unknown format, wrong task, bad weights."""


class DivergedError(EmsslError, FloatingPointError):
    """A training loss became NaN or infinite (the weights of the last finished step are kept)."""


class DeviceMemoryError(EmsslError, RuntimeError):
    """The GPU (or MPS device) ran out of memory and the run cannot go on at a smaller batch.

    ``step`` is the last step that finished; the network keeps the weights of that step.
    """

    def __init__(self, message: str, *, step: int = 0, batch_size: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.batch_size = batch_size
