"""``emssl export``: share a trained model as a bioimage.io package, an ONNX graph or a TorchScript file.

The parser part is light (no torch); the work happens in :mod:`napari_emssl.export`.
"""

from __future__ import annotations

import argparse
import sys

FORMATS = ("bioimageio", "onnx", "torchscript")


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``export`` sub-command (``sub`` is ``build_parser``'s sub-parsers object)."""
    ex = sub.add_parser(
        "export", help="export a model as a bioimage.io package, ONNX or TorchScript",
        description="Export a model directory (or a napari-emssl bioimage.io package). The exported graph takes "
                    "percentile-normalised images (batch, 1, y, x) and returns class probabilities (segment) or the "
                    "restored image in normalised units (denoise, bgremove, superres at factor times the size). "
                    "Every export is run once and compared with PyTorch before it is kept.")
    ex.add_argument("--model", required=True, help="model directory (or a bioimage.io package made by napari-emssl)")
    ex.add_argument("--format", required=True, metavar="{" + ",".join(FORMATS) + "}", help="what to write")
    ex.add_argument("--out", required=True,
                    help="onnx/torchscript: the file (or an existing folder, which receives <model>.onnx / <model>.pt); "
                         "bioimageio: a .zip path for a zipped package, any other path for an unpacked package folder")
    ex.add_argument("--name", help="bioimage.io: model name (default: from the task and architecture)")
    ex.add_argument("--author", action="append", default=[], metavar="NAME",
                    help="bioimage.io: an author (repeat for several; default: 'napari-emssl user')")
    ex.add_argument("--license", default="CC-BY-4.0", help="bioimage.io: SPDX licence id of the model (default CC-BY-4.0)")
    ex.add_argument("--description", help="bioimage.io: one-paragraph description (default: from model.json)")
    ex.add_argument("--test-image", metavar="PATH",
                    help="bioimage.io: TIFF image to make the test input/output and cover from (default: the bundled "
                         "ssTEM sample)")
    ex.add_argument("--no-check", action="store_true", help="onnx/torchscript: do not run the export to compare it with PyTorch")
    ex.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return ex


def export(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK
    from .errors import InputError
    from .export import export as run_export

    if args.format not in FORMATS:
        raise InputError(f"unknown export format {args.format!r}; choose one of {', '.join(FORMATS)}")
    test_image, note = None, None
    if args.test_image:
        from .io import read_image

        test_image, _ = read_image(args.test_image)
        note = f"a crop of {args.test_image}"
    report = run_export(args.model, args.format, args.out, check=not args.no_check, name=args.name, authors=args.author,
                        license=args.license, description=args.description, test_image=test_image, test_image_note=note)
    checks = ", ".join(f"{fmt} {diff:.1e}" for fmt, diff in report.max_abs_diff.items())
    parts = [args.format]
    if checks:
        parts.append(f"max |difference| to PyTorch: {checks}")
    if report.status:
        parts.append(f"bioimage.io validation: {report.status}")
    print(f"wrote {report.path} ({'; '.join(parts)})", file=sys.stdout)
    return EXIT_OK
