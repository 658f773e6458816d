"""The ``emssl`` command line: the same runs as the napari widgets, headless.

Exit codes: 0 done, 1 error (one line on stderr; the traceback only with ``--debug``),
130 cancelled (Ctrl-C; what was trained so far is still saved).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import TASKS
from .errors import EmsslError

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emssl", description="Self-supervised deep learning for electron microscopy.")
    parser.add_argument("--version", action="version", version=f"napari-emssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda or mps")
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    ft = sub.add_parser("finetune", help="fine-tune a network on an image and its painted labels")
    ft.add_argument("--task", choices=TASKS, default="segment")
    ft.add_argument("--image", required=True, help="TIFF image or stack (2D YX or 3D ZYX)")
    ft.add_argument("--labels", help="label image of the same shape: 0 = unpainted, 1 = background, 2.. = classes")
    ft.add_argument("--target", help="paired clean / high-resolution image (restoration tasks)")
    ft.add_argument("--out", required=True, help="model directory to write")
    ft.add_argument("--arch", help="architecture (see `emssl models`); default: the task's default")
    ft.add_argument("--arch-kwargs", metavar="JSON", help='architecture options as JSON, e.g. \'{"base_channels": 8}\'')
    ft.add_argument("--init", default="bundled", help="bundled (default), random, or a model directory")
    budget = ft.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int)
    budget.add_argument("--epochs", type=int)
    ft.add_argument("--batch-size", type=int, default=8)
    ft.add_argument("--patch-size", type=int, default=128)
    ft.add_argument("--lr", type=float, default=2e-3)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--factor", type=int, choices=(2, 4), default=2, help="super-resolution factor")
    common(ft)

    pr = sub.add_parser("predict", help="apply a model directory to images; writes OUT/<input stem>.tif")
    pr.add_argument("--model", required=True, help="model directory")
    pr.add_argument("--input", required=True, nargs="+", help="TIFF image(s) or stack(s)")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--probabilities", action="store_true", help="also write <stem>_probabilities.tif (class axis first)")
    pr.add_argument("--tile", type=int, default=256)
    pr.add_argument("--batch-size", type=int, default=4)
    common(pr)

    md = sub.add_parser("models", help="list architectures, bundled weights and model directories")
    md.add_argument("--dir", help="also list the model directories found below this folder")
    md.add_argument("--debug", action="store_true")

    demo = sub.add_parser("demo", help="the whole workflow on the bundled sample data, headless")
    demo.add_argument("--out", default="emssl-demo", help="output folder (default: ./emssl-demo)")
    demo.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the fine-tuning default)")
    demo.add_argument("--arch", help="architecture (see `emssl models`); default: the segmentation default")
    demo.add_argument("--arch-kwargs", metavar="JSON", help="architecture options as JSON")
    common(demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import _cli_commands as commands  # heavy imports (torch) only after parsing

    handler = {"finetune": commands.finetune, "predict": commands.predict, "models": commands.models, "demo": commands.demo}
    try:
        return handler[args.command](args)
    except KeyboardInterrupt:
        print("emssl: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except EmsslError as exc:
        if args.debug:
            raise
        print(f"emssl: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - one clear line, the traceback with --debug
        if args.debug:
            raise
        print(f"emssl: error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def output_path(out_dir: str, input_path: str, suffix: str = "") -> Path:
    """OUT/<input stem><suffix>.tif (``.ome`` dropped from the stem)."""
    stem = Path(input_path).name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpg", ".jpeg"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return Path(out_dir) / f"{stem}{suffix}.tif"


if __name__ == "__main__":
    sys.exit(main())
