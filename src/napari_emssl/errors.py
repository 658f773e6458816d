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
