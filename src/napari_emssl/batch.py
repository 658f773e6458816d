"""Apply one model to many image files: a folder, a glob or a list, streaming every result to disk.

Every input is read lazily (memory-mapped or chunk by chunk, see :mod:`napari_emssl.io.lazy`)
and its result written slice by slice to a TIFF or OME-Zarr file under a temporary name,
renamed when complete: memory stays bounded by a few slices whatever the stack size, and a
stopped or failed run never leaves a half-written file under a final name. Outputs that
exist already are skipped unless ``overwrite``. One failing file never stops the batch:
it is reported (``FileEnded`` with status ``failed`` and the reason) and the next one starts.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PredictConfig
from .engine.cancel import CancelToken
from .engine.events import Event, FileEnded, FileStarted, OutputOpened, RunCancelled, RunFinished, RunStarted
from .engine.model_dir import TrainedModel, load_model
from .errors import EmsslError, InputError
from .io.lazy import is_zarr_path, open_lazy
from .io.sinks import SINK_FORMATS, ZarrSink, open_sink, output_suffix

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_STRIP = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".png", ".jpg", ".jpeg")
RESULT_KINDS = {"segment": "segmentation", "denoise": "denoised", "bgremove": "background_removed", "superres": "superres"}


@dataclass
class BatchSummary:
    """What a batch run did with each input (paths as given, outputs as written)."""

    done: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    seconds: float = 0.0
    megapixels: float = 0.0

    def line(self) -> str:
        return (f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
                f"in {self.seconds:.1f} s ({self.megapixels / max(self.seconds, 1e-9):.2f} megapixels/s)")


def is_result_name(path: Path) -> bool:
    """A name this package gives results written beside their inputs (``<stem>_segmentation.tif``, ...)."""
    stem = _stem(path)
    return any(stem.endswith(f"_{kind}") for kind in (*RESULT_KINDS.values(), "probabilities"))


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images, sorted; zarr folders count as one image) and glob patterns -> image paths.

    Folders and globs leave out results written beside their inputs by an earlier run
    (``*_segmentation.tif``, ``*_denoised.ome.zarr``, ...), so running the same command again
    does not apply the model to its own results; a file named explicitly is always taken.
    Raises :class:`InputError` for an item that matches nothing.
    """
    paths: list[Path] = []
    for item in items:
        text = str(item)
        p = Path(text)
        if is_zarr_path(p) or p.is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if ((c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES
                                                       and not c.name.startswith(".")) or is_zarr_path(c))
                           and not is_result_name(c))
            if not found:
                raise InputError(f"The folder '{text}' holds no TIFF, PNG or JPEG images (nor zarr folders).")
        elif glob.has_magic(text):
            found = sorted(Path(m) for m in glob.glob(text, recursive=True)
                           if ((Path(m).is_file() and not Path(m).name.startswith(".")) or is_zarr_path(m))
                           and not is_result_name(Path(m)))
            if not found:
                raise InputError(f"No image matches '{text}'.")
        else:
            raise InputError(f"'{text}' does not exist; expected an image file, a folder of images or a glob such as 'scans/*.tif'.")
        paths += [f for f in found if f not in paths]
    return paths


def _stem(path: Path) -> str:
    name = path.name
    for ext in _STRIP:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def output_paths(inputs: Sequence[Path], out_dir: str | os.PathLike | None, task: str, fmt: str = "tif",
                 suffix: str | None = None) -> list[Path]:
    """Where each input's result goes: ``OUT/<stem><suffix>`` or, without ``out_dir``, beside the input
    as ``<stem>_<kind><suffix>`` (``kind``: segmentation, denoised, ...). Inputs of the same name from
    different folders get their folder's name in front, so no result overwrites another."""
    ending = output_suffix(fmt)
    file_out = _as_file_out(inputs, out_dir)
    if file_out is not None:
        if suffix:
            return [file_out.with_name(f"{_stem(file_out)}{suffix}{ending}")]
        if not file_out.name.lower().endswith(_FILE_ENDINGS[fmt]):
            raise InputError(f"--out '{file_out}' does not end like a {fmt} output ({', '.join(_FILE_ENDINGS[fmt])}); "
                             f"change its name or --format.")
        return [file_out]
    names = [_stem(p) for p in inputs]
    outs = []
    for path, name in zip(inputs, names):
        if out_dir is None:
            outs.append(path.parent / f"{name}_{RESULT_KINDS.get(task, task)}{suffix or ''}{ending}")
            continue
        if names.count(name) > 1:
            name = f"{path.resolve().parent.name}_{name}"
        outs.append(Path(out_dir) / f"{name}{suffix or ''}{ending}")
    seen: dict[Path, Path] = {}
    for path, out in zip(inputs, outs):
        if out in seen:
            raise InputError(f"'{path}' and '{seen[out]}' would both be written to '{out}'; rename one of them.")
        seen[out] = path
    return outs


_FILE_ENDINGS = {"tif": (".tif", ".tiff"), "zarr": (".zarr",)}


def _as_file_out(inputs: Sequence[Path], out_dir) -> Path | None:
    """``out_dir`` when it names one output file (``--out result.tif`` for a single input), else None."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    names_a_file = out.name.lower().endswith(sum(_FILE_ENDINGS.values(), ()))
    if not names_a_file or (out.is_dir() and not is_zarr_path(out)):
        return None
    if len(inputs) != 1:
        raise InputError(f"--out '{out}' names one file but there are {len(inputs)} inputs; give a folder for several "
                         f"inputs (each result is written there under its input's name).")
    return out


def iter_predict_files(
    model: TrainedModel | str,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    config: PredictConfig | None = None,
    *,
    fmt: str = "tif",
    overwrite: bool = False,
    cancel: CancelToken | None = None,
) -> Iterator[Event]:
    """Apply ``model`` to every input file; yield ``FileStarted``/``FileEnded`` around each file's own
    prediction events and end with ``RunFinished`` (result: :class:`BatchSummary`) or ``RunCancelled``.
    """
    config = config or PredictConfig()
    if fmt not in SINK_FORMATS:
        raise InputError(f"Unknown output format {fmt!r}; expected one of {', '.join(SINK_FORMATS)}.")
    if not isinstance(model, TrainedModel):
        model = load_model(model)
    paths = expand_inputs(inputs)
    outs = output_paths(paths, out_dir, model.task, fmt)
    prob_outs = output_paths(paths, out_dir, model.task, "tif", suffix="_probabilities") if config.probabilities else None
    summary, started, count = BatchSummary(), time.perf_counter(), len(paths)
    yield RunStarted(kind="batch", total_steps=count, device=str(config.device), info={"files": count, "format": fmt})
    for index, (path, out) in enumerate(zip(paths, outs)):
        if cancel is not None and cancel.cancelled:
            summary.seconds = time.perf_counter() - started
            yield RunCancelled(step=index, seconds=summary.seconds, result=summary)
            return
        yield FileStarted(index=index, count=count, path=str(path), output=str(out))
        if not overwrite and out.exists():
            reason = "the output exists already (not overwritten)"
            summary.skipped.append((str(path), reason))
            yield FileEnded(index, count, str(path), str(out), "skipped", reason)
            continue
        file_started = time.perf_counter()
        try:
            done = yield from _predict_file(model, path, out, prob_outs[index] if prob_outs else None, config, fmt, cancel)
        except EmsslError as exc:
            reason = str(exc)
        except MemoryError:
            reason = "out of memory"
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the batch; the reason is reported
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if done is None:  # stopped
                summary.seconds = time.perf_counter() - started
                yield FileEnded(index, count, str(path), str(out), "stopped", "stopped before it was complete; nothing written")
                yield RunCancelled(step=index, seconds=summary.seconds, result=summary)
                return
            summary.done.append((str(path), str(out)))
            pixels, note = done
            summary.megapixels += pixels / 1e6
            yield FileEnded(index, count, str(path), str(out), "done", seconds=time.perf_counter() - file_started, note=note)
            continue
        summary.failed.append((str(path), reason))
        yield FileEnded(index, count, str(path), str(out), "failed", reason, time.perf_counter() - file_started)
    summary.seconds = time.perf_counter() - started
    yield RunFinished(result=summary, seconds=summary.seconds)


def _predict_file(model: TrainedModel, path: Path, out: Path, prob_out: Path | None, config: PredictConfig, fmt: str,
                  cancel: CancelToken | None):
    """One input streamed to its output(s); yields its prediction events, returns ``(pixel count, note)`` (None if stopped)."""
    from .prediction import iter_apply
    from .tasks.denoise_corrections import leak_share_text
    from .tasks.superres import output_scale

    image, meta = open_lazy(path)
    try:
        def make_sinks(specs):
            sinks = {}
            try:
                for key, (shape, dtype, axes) in specs.items():
                    if key == "probabilities":
                        sinks[key] = open_sink("tif", prob_out, shape, dtype, axes=axes)
                        continue
                    scale = meta.scale
                    if scale is not None and shape[-1] != image.shape[-1]:  # super-resolution
                        scale = output_scale(scale, shape[-1] // image.shape[-1])
                    sinks[key] = open_sink(fmt, out, shape, dtype, scale=scale, axes=axes)
            except BaseException:
                for sink in sinks.values():
                    sink.abort()
                raise
            return sinks

        for event in iter_apply(model, image, config, make_sinks, cancel=cancel, name=f"image '{path}'"):
            if isinstance(event, RunCancelled):
                return None
            if isinstance(event, RunFinished):
                return _pixels(image), leak_share_text((event.result.get("info") or {}).get("leak_shares", []))
            yield event  # the file's own RunStarted, PredictionTile and PredictionSlice events
        return None
    finally:
        if hasattr(image, "close"):
            image.close()


def _pixels(image: Any) -> int:
    n = 1
    for side in image.shape:
        n *= int(side)
    return n


def iter_predict_to_zarr(
    model: TrainedModel,
    image: Any,
    path: str | os.PathLike,
    config: PredictConfig | None = None,
    *,
    scale=None,
    cancel: CancelToken | None = None,
    name: str = "image",
) -> Iterator[Event]:
    """Stream the main result of one (lazily read) image into the OME-Zarr image ``path``, which can be
    shown while it fills: ``OutputOpened`` says when it exists, ``PredictionSlice`` when a slice is in.

    Ends with ``RunFinished`` (result: the iter_apply dict) or ``RunCancelled``; a stopped run
    leaves the slices done so far (the rest stays 0). Class probabilities are not streamed.
    """
    from .prediction import iter_apply
    from .tasks.superres import output_scale

    config = config or PredictConfig()
    opened: list[OutputOpened] = []

    def make_sinks(specs):
        key = "labels" if "labels" in specs else "image"
        shape, dtype, _ = specs[key]
        sink_scale = output_scale(scale, shape[-1] // image.shape[-1]) if scale is not None else None
        sink = ZarrSink(path, shape, dtype, scale=sink_scale, atomic=False, name=name)
        opened.append(OutputOpened(path=str(path), key=key))
        return {key: sink}

    for event in iter_apply(model, image, config, make_sinks, cancel=cancel, name=name):
        while opened:
            yield opened.pop(0)
        yield event
