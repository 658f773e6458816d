"""The ``emssl`` command line: the same runs as the napari widgets, headless.

Exit codes: 0 done, 1 error (one line on stderr; the traceback only with ``--debug``),
130 cancelled (Ctrl-C; what was trained so far is still saved).
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import DENOISE_LOSSES, LEAK_AUTO, MASK_REPLACEMENTS, METHODS, TASKS, FinetuneConfig, PretrainConfig
from .errors import EmsslError

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130


def leak_share(text: str) -> float | str:
    """``--leak-correction``: "auto" or a number (its range is checked with the rest of the settings)."""
    if text.strip().lower() == LEAK_AUTO:
        return LEAK_AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1 or {LEAK_AUTO!r}, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emssl", description="Self-supervised deep learning for electron microscopy.")
    parser.add_argument("--version", action="version", version=f"napari-emssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda or mps")
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    pt = sub.add_parser("pretrain", help="pretrain a network self-supervised on unlabeled images",
                        description="Self-supervised pretraining. Multi-GPU: torchrun --nproc_per_node N -m napari_emssl.cli "
                                    "pretrain ... (--batch-size is per process; the global batch is N times larger).")
    pt.add_argument("--method", required=True, choices=METHODS, help="gan (pix2pix), mae, mocov3 or mff")
    pt.add_argument("--data", required=True, nargs="+", metavar="PATH",
                    help="TIFF images or stacks, PNG/JPEG files, folders of them, or zarr arrays")
    pt.add_argument("--out", required=True, help="output folder: checkpoint + pretrained model directory")
    pt.add_argument("--arch", help="architecture to pretrain (see `emssl models`); default: the method's default")
    pt.add_argument("--arch-kwargs", metavar="JSON", help='architecture options as JSON, e.g. \'{"base_channels": 8}\'')
    pt.add_argument("--method-options", metavar="JSON", help="options of the method as JSON (e.g. mask ratio)")
    pbudget = pt.add_mutually_exclusive_group()
    pbudget.add_argument("--steps", type=int, help=f"optimiser steps (default {PretrainConfig.DEFAULT_STEPS})")
    pbudget.add_argument("--epochs", type=int, help="epochs of --samples-per-epoch random patches")
    pt.add_argument("--samples-per-epoch", type=int, default=1024, help="random patches per epoch (default 1024)")
    pt.add_argument("--batch-size", type=int, default=16, help="patches per step and process (default 16)")
    pt.add_argument("--patch", type=int, default=128, help="patch side in pixels, a multiple of 16 (default 128)")
    pt.add_argument("--lr", type=float, help="peak learning rate of every phase (default: the method's own)")
    pt.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    pt.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    pt.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    pt.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                    help="seconds between checkpoints (default 300; always at the end and on Ctrl-C)")
    common(pt)

    ft = sub.add_parser("finetune", help="fine-tune a network: segmentation from painted labels, or restoration",
                        description="segment: learns from --labels. denoise, bgremove, superres: learn from the image "
                                    "itself (blind-spot denoising; synthetic pairs matched to the image; pairs made by "
                                    "downscaling the image), or from a paired --target.")
    ft.add_argument("--task", choices=TASKS, default="segment")
    ft.add_argument("--image", required=True, help="TIFF image or stack (2D YX or 3D ZYX)")
    ft.add_argument("--labels", help="label image of the same shape: 0 = unpainted, 1 = background, 2.. = classes")
    ft.add_argument("--target", help="restoration: a paired clean, background-free or (superres) high-resolution image "
                                     "of the same field of view, in the image's intensity units")
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
    ft.add_argument("--mask-fraction", type=float, default=FinetuneConfig.mask_fraction,
                    help="self-supervised denoising: fraction of pixels hidden from the network per patch "
                         f"(default {FinetuneConfig.mask_fraction:g})")
    ft.add_argument("--mask-replace", choices=MASK_REPLACEMENTS, default=FinetuneConfig.mask_replace,
                    help="self-supervised denoising: what a hidden pixel shows the network, the mean of its 8 "
                         "neighbours (default) or one of them; 'neighbour' hides the pixel completely, "
                         "better on smooth images (see docs/benchmarks.md)")
    ft.add_argument("--denoise-loss", choices=DENOISE_LOSSES, default=FinetuneConfig.denoise_loss,
                    help="self-supervised denoising: 're-visible' (default: the blind-spot loss plus a term that "
                         "teaches the network how much of each pixel's own value to use) or 'blind-spot' (the "
                         "blind-spot loss alone, about 30 %% faster to train; see docs/benchmarks.md)")
    ft.add_argument("--mean-correction", type=float, default=FinetuneConfig.mean_correction, metavar="PX",
                    help="self-supervised denoising: after prediction, add back the Gaussian low-pass (sigma PX pixels) "
                         "of what was removed, so the result keeps the input's local mean; recorded in the model "
                         f"(default {FinetuneConfig.mean_correction:g}; 0: off)")
    ft.add_argument("--leak-correction", type=leak_share, default=FinetuneConfig.leak_correction, metavar="F",
                    help="self-supervised denoising: after prediction, take out this share of the weight the network "
                         "gives each pixel's own value (its own noise), measured with one more network pass; recorded "
                         f"in the model (default {FinetuneConfig.leak_correction}: chosen per slice from the image by "
                         "Stein's unbiased risk estimate, 0 to 0.75; 0: off; 1: each pixel from its neighbours alone)")
    ft.add_argument("--back-projection", type=int, default=FinetuneConfig.back_projection, metavar="N",
                    help="self-supervised super-resolution: after prediction, N steps of iterative back-projection, so "
                         "that the result downscaled gives back the input; recorded in the model "
                         f"(default {FinetuneConfig.back_projection}; 0: off)")
    ft.add_argument("--lattice-pairs", action="store_true",
                    help="self-supervised super-resolution of atomic-resolution images: learn from synthetic "
                         "atom-column lattices matched to the image's lattice period instead of the image downscaled "
                         "once more (which fails on lattices: docs/benchmarks.md)")
    common(ft)

    pr = sub.add_parser("predict", help="apply a model to images, folders or globs; writes OUT/<input stem>.tif",
                        description="Every input is read lazily and its result written slice by slice under a temporary "
                                    "name, renamed when complete, so stacks larger than memory work and a stopped run "
                                    "leaves no half-written file. Existing outputs are skipped unless --overwrite. One "
                                    "failing file does not stop the others; the exit code is 1 if any failed.")
    pr.add_argument("--model", required=True, help="model directory")
    pr.add_argument("--input", required=True, nargs="+",
                    help="TIFF images or stacks, zarr/OME-Zarr folders, folders of images, or globs such as 'scans/*.tif' "
                         "(folders and globs leave out earlier results such as *_segmentation.tif)")
    pr.add_argument("--out", help="output folder, or for a single input the output file (a name ending in .tif, "
                                  ".tiff or .zarr); default: beside each input, as <stem>_segmentation.tif, "
                                  "<stem>_denoised.tif, ...")
    pr.add_argument("--format", choices=("tif", "zarr"), default="tif", help="tif (default) or zarr (OME-Zarr)")
    pr.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: skip those inputs)")
    pr.add_argument("--probabilities", action="store_true",
                    help="also write <stem>_probabilities.tif (ImageJ hyperstack: class axis first for 2D, ZCYX for stacks)")
    pr.add_argument("--target", help="restoration: a clean / high-resolution image to score the result against (PSNR, SSIM)")
    pr.add_argument("--keep-dtype", action="store_true",
                    help="restoration: write the input's pixel type (rounded, clipped to its range) instead of float32")
    pr.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="restoration: average the predictions of the 8 flips/rotations of each slice (8x slower; "
                         "default: on for a single image of at most 4096 x 4096 pixels; bigger images and stacks get the "
                         "mean of each slice and its mirror, 2x); --no-tta: one view")
    pr.add_argument("--leak-correction", type=leak_share, default=None, metavar="F",
                    help="self-supervised denoising: the share of each pixel's own weight to take out, instead of the "
                         "one the model records (auto: chosen per slice; 0: off; 1: each pixel from its neighbours alone)")
    pr.add_argument("--z-average", type=float, default=0.0, metavar="W",
                    help="segmentation of a volume: average each slice's class probabilities with its two neighbours, "
                         "each weighted W relative to the slice (default 0: off; 0.25 raised Dice on the ssTEM stack)")
    pr.add_argument("--tile", type=int, default=None, help="tile side in pixels (default 512 on CUDA, 256 elsewhere)")
    pr.add_argument("--batch-size", type=int, default=4,
                    help="tiles per batch (default 4; on CUDA chosen from the free GPU memory)")
    pr.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA; pays off on big stacks)")
    common(pr)

    from ._cli_export import add_parser as add_export_parser  # light: no torch

    add_export_parser(sub)

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

    handler = {"pretrain": commands.pretrain, "finetune": commands.finetune, "predict": commands.predict, "models": commands.models, "demo": commands.demo}
    from . import _cli_export

    handler["export"] = _cli_export.export
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


if __name__ == "__main__":
    sys.exit(main())
