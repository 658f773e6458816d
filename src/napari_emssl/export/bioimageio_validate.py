"""Loading ``bioimageio.spec`` (an optional dependency) and validating packages offline."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from ..errors import EmsslError, InputError


def spec_module():
    try:
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise EmsslError(
            "bioimage.io export needs the Python package 'bioimageio.spec', which is not installed: "
            "pip install 'napari-emssl[export]' (or pip install bioimageio.spec)"
        ) from None
    return v0_5


@contextlib.contextmanager
def quiet_bioimageio():
    """bioimageio.spec logs through loguru: silence it for the duration of a call (and restore it)."""
    try:
        from loguru import logger
    except ImportError:
        yield
        return
    logger.disable("bioimageio")
    try:
        yield
    finally:
        logger.enable("bioimageio")


def first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg')}"
        except Exception:  # noqa: BLE001 - fall back to the message
            pass
    return str(exc).splitlines()[0]


def validate_package(path: str | Path, *, run_model: bool = True) -> str:
    """Validate a package (zip or folder) offline; returns the bioimage.io status.

    ``bioimageio.spec`` checks the description and every file it references (hashes,
    shapes of the test tensors against the axes): "valid-format" when all of that
    passes, which is as far as the spec package alone goes. When ``bioimageio.core`` is
    installed (and ``run_model``), its model test also runs the weights on the test input
    with the pre- and postprocessing and compares the test output: "passed". Anything
    else is returned as "failed: <reasons>".
    """
    spec_module()
    from bioimageio.spec import load_description

    source = Path(path)
    if not source.exists():
        raise InputError(f"{str(source)!r} does not exist")
    if source.is_dir():
        source = _rdf_in_folder(source)
    with quiet_bioimageio():
        descr = load_description(source, perform_io_checks=True, format_version="latest")
        summary = descr.validation_summary
        if summary.status == "failed" or summary.errors:
            return "failed: " + ("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.errors) or "invalid")
        if not run_model:
            return str(summary.status)
        try:
            from bioimageio.core import test_model
        except Exception:  # noqa: BLE001 - not installed, or not importable next to this bioimageio.spec
            return str(summary.status)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tested = test_model(source, devices=["cpu"])
    if tested.status != "passed":
        return "failed: " + ("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in tested.errors) or str(tested.status))
    return "passed"


VALID = ("passed", "valid-format")


def _rdf_in_folder(folder: Path) -> Path:
    for candidate in ("rdf.yaml", "bioimageio.yaml"):
        if (folder / candidate).is_file():
            return folder / candidate
    found = sorted(folder.glob("*.bioimageio.yaml"))
    if not found:
        raise InputError(f"{str(folder)!r} holds no bioimage.io description (rdf.yaml / bioimageio.yaml)")
    return found[0]
