"""Open any model napari-emssl can apply: a model directory, or a bioimage.io package made by napari-emssl.

A package made by ``emssl export --format bioimageio`` carries the model directory's
``model.json`` + ``model.safetensors`` (+ ``log.csv``) as attachments; the model is rebuilt
from them by :func:`napari_emssl.engine.model_dir.load_model`, with all its checks
(format version, task, weights that fit the architecture). Nothing is unpickled and the
TorchScript/ONNX weights are not used. Packages made by other tools are refused with a
message that says so.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from ..engine.model_dir import LOG_NAME, META_NAME, WEIGHTS_NAME, TrainedModel, load_model
from ..errors import ModelFormatError

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def _is_rdf(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base in RDF_NAMES or base.endswith(".bioimageio.yaml")


def _not_ours(path: Path) -> ModelFormatError:
    return ModelFormatError(
        f"{str(path)!r} is a bioimage.io package that was not made by napari-emssl (it has no {META_NAME} and "
        f"{WEIGHTS_NAME} attachments): napari-emssl applies only its own model directories and packages"
    )


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip or a folder with an rdf.yaml / bioimageio.yaml."""
    path = Path(path)
    if path.is_dir():
        return any(_is_rdf(p.name) for p in path.iterdir() if p.is_file())
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(_is_rdf(n) for n in archive.namelist() if "/" not in n)
    return False


def load_package_or_none(source: str | os.PathLike, *, task: str | None = None, map_location: str = "cpu") -> TrainedModel | None:
    """The hook for :func:`~napari_emssl.engine.model_dir.load_model`: a model from a bioimage.io package, else None.

    None (so ``load_model`` goes on as usual) for anything that is not a package: model
    directories (also unpacked napari-emssl packages, which are model directories too),
    ``model.json`` / ``model.safetensors`` paths, paths that do not exist, other files.
    A zipped package made by napari-emssl gives its model; a package made by another tool
    is refused with a :class:`ModelFormatError` that says so. Never calls ``load_model`` on
    ``source`` itself, so it cannot recurse.
    """
    if isinstance(source, TrainedModel):
        return None
    path = Path(source)
    if path.is_dir():
        if not (path / META_NAME).exists() and is_bioimageio_package(path):
            raise _not_ours(path)
        return None
    if path.is_file() and path.name not in (META_NAME, WEIGHTS_NAME) and is_bioimageio_package(path):
        return load_any(path, task=task, map_location=map_location)
    return None


def load_any(source: str | os.PathLike | TrainedModel, *, task: str | None = None, map_location: str = "cpu") -> TrainedModel:
    """A :class:`TrainedModel` from a model directory, an unpacked napari-emssl bioimage.io package or its zip."""
    if isinstance(source, TrainedModel):
        return source
    path = Path(source)
    if path.is_file() and path.name in (META_NAME, WEIGHTS_NAME):
        path = path.parent
    if path.is_dir():
        if not (path / META_NAME).exists() and is_bioimageio_package(path):
            raise _not_ours(path)
        return load_model(path, task=task, map_location=map_location)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not any(_is_rdf(n) for n in names if "/" not in n):
                raise ModelFormatError(f"{str(path)!r} is a zip file but not a bioimage.io package (no rdf.yaml inside)")
            if META_NAME not in names or WEIGHTS_NAME not in names:
                raise _not_ours(path)
            with tempfile.TemporaryDirectory(prefix="emssl-package-") as tmp:
                for name in (META_NAME, WEIGHTS_NAME, LOG_NAME):
                    if name in names:
                        Path(tmp, name).write_bytes(archive.read(name))
                try:
                    return load_model(tmp, task=task, map_location=map_location)
                except ModelFormatError as exc:
                    raise ModelFormatError(str(exc).replace(tmp, str(path))) from None
    if path.is_file():
        raise ModelFormatError(
            f"{str(path)!r} is neither a model directory nor a bioimage.io package (.zip or unpacked folder)"
        )
    return load_model(path, task=task, map_location=map_location)  # its message for a path that does not exist
