"""Denoising and super-resolution on real STEM and SEM images: ours versus the classic and learned baselines.

    PYTHONPATH=.bench-site:src .venv/bin/python benchmarks/restoration.py --task denoise [--images ...] [--threads 1]
    PYTHONPATH=src .venv/bin/python benchmarks/restoration.py --task superres

Images (``$EMSSL_DATA``, see its README): two atomic-resolution STEM detector images
(atomap, GPL-3) and two SEM micrographs (aquami, DeepSEM nanowires; MIT), each a central
crop of at most 512 x 512 pixels. Each image, mapped to unit intensity (1st percentile ->
0.05, 99.8th -> 1), is the clean reference. Four more images (``HELD_OUT``: an ABF-STEM
image, two other nanowire micrographs, a slice of the labeled ssTEM stack) were never used to
choose a default and are run only when named, to check that the margins hold beyond the
images the defaults were chosen on. The bundled weights were pretrained on every unlabeled
image of the data folder, which includes all of these but the ssTEM slice
(``NOT_PRETRAINED_ON``).

``--task denoise``: low-dose Poisson-Gaussian noise is added, ``Poisson(dose * x) / dose +
N(0, read^2)`` (default dose 20 electrons per unit intensity, read noise 0.02), seeded. Every
method sees only the noisy image:
  - ``noisy``: the input itself;
  - ``nlm``: scikit-image non-local means on the variance-stabilised image (generalised
    Anscombe transform, noise std 1 after it; patch 5, distance 6, h = 0.8; exact unbiased
    inverse, Mäkitalo & Foi 2013, closed-form approximation);
  - ``bm3d``: the ``bm3d`` package (Mäkitalo & Foi's BM3D) on the same stabilised image with
    sigma 1 and the same inverse;
  - ``n2v``: Noise2Void from ``careamics`` (its default UNet, N2V masking), trained on the
    noisy image for ``--n2v-epochs`` x ``--n2v-steps`` batches of 16 patches of 64 px (20 x 60:
    as many pixels as our 600 steps of 8 patches of 128 px), and ``n2v_long`` for
    ``--n2v-long-epochs`` (100: about the wall time of ours on this CPU);
  - ``ours``: ``emssl finetune --task denoise`` with every default (bundled GAN-pretrained
    residual U-Net, blind-spot self-supervision with the re-visible loss, 1200 steps) and
    ``ours_random`` the same from random weights; ``--denoise-loss blind-spot`` trains with
    the blind-spot loss alone (the default before the re-visible one).
  The classic methods are given the true dose and read noise (for the variance
  stabilisation): an advantage over the learned methods, which estimate nothing.

``--task superres``: the reference is area-downscaled by 2 (a detector with twice larger
pixels); ``bicubic`` upsampling, ``back_projection`` (bicubic upsampling corrected until its
area downscaling gives back the input: iterative back-projection), ``ours`` (``--task superres`` defaults: self-supervised pairs
made by downscaling the input once more, from the bundled weights, 600 steps) and
``ours_random`` (the same network and training from random weights) restore the full
resolution.

PSNR (data range of the reference) and SSIM on the whole image, seconds of wall time per
method (training + prediction). Results: ``benchmarks/results/restoration_<task>.json``;
``benchmarks/report.py`` puts them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("EMSSL_DATA", HERE.parents[1] / "shared" / "data"))

from napari_emssl import __version__, api  # noqa: E402
from napari_emssl.cli import leak_share  # noqa: E402
from napari_emssl.config import DENOISE_LOSSES, MASK_REPLACEMENTS, FinetuneConfig, PredictConfig  # noqa: E402
from napari_emssl.data.degrade import downscale_area, upscale_bicubic  # noqa: E402
from napari_emssl.tasks import superres  # noqa: E402
from napari_emssl.tasks.metrics import restoration_metrics  # noqa: E402

IMAGES = {
    "stem_adf": ("stem_atomic/atomap_adf_cropped.tif", "atomic-resolution ADF-STEM, SrTiO3 (atomap, GPL-3)"),
    "stem_detector": ("stem_atomic/atomap_example_detector_adf.tif", "ADF-STEM detector image (atomap, GPL-3)"),
    "sem_aquami": ("aquami_sem/Sample.tif", "SEM, porous ligament microstructure (aquami, MIT)"),
    "sem_nanowires": ("nanowires_sem/images/125nm_03_cropped.png", "SEM, nanowire array (DeepSEM, MIT)"),
    # held out: never used to choose a default (``--images`` must name them)
    "stem_abf": ("stem_atomic/atomap_abf_cropped.tif", "atomic-resolution ABF-STEM, SrTiO3 (atomap, GPL-3)"),
    "sem_nanowires_05": ("nanowires_sem/images/130nm_05_cropped.png", "SEM, nanowire array, another micrograph (DeepSEM, MIT)"),
    "sem_nanowires_12": ("nanowires_sem/images/150nm_12_cropped.png", "SEM, nanowire array, another micrograph (DeepSEM, MIT)"),
    "sstem_stack1": ("drosophila_vnc_sstem/stack1/raw/10.tif",
                     "ssTEM, Drosophila VNC, a slice of the labeled stack (Gerhard et al. 2013, CC BY-NC-SA 3.0)"),
}
HELD_OUT = ("stem_abf", "sem_nanowires_05", "sem_nanowires_12", "sstem_stack1")
# the images the bundled weights' pretraining never saw (its corpus: every unlabeled image of the data folder)
NOT_PRETRAINED_ON = ("sstem_stack1",)
CROP = 512


def load_clean(name: str) -> np.ndarray:
    """The reference: a central crop (<= 512 px, even sides), mapped to 0.05 .. 1 (1st / 99.8th percentile)."""
    from skimage.io import imread

    path = ROOT / IMAGES[name][0]
    image = imread(path).astype(np.float64)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    ny, nx = (min(CROP, s) // 2 * 2 for s in image.shape)
    y0, x0 = (image.shape[0] - ny) // 2, (image.shape[1] - nx) // 2
    image = image[y0 : y0 + ny, x0 : x0 + nx]
    lo, hi = np.percentile(image, [1.0, 99.8])
    return (0.05 + 0.95 * (image - lo) / (hi - lo)).astype(np.float32)


def add_noise(clean: np.ndarray, dose: float, read: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.clip(clean, 0, None) * dose)
    return (counts / dose + read * rng.standard_normal(clean.shape)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- variance stabilisation


DOSE, READ = 20.0, 0.02  # the default low-dose noise: electrons per unit intensity, Gaussian read noise


def noisy_image(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(clean, noisy)``: a benchmark image and its low-dose copy (``DOSE``, ``READ``, noise ``seed``)."""
    clean = load_clean(name)
    return clean, add_noise(clean, DOSE, READ, seed)


def image_arguments(parser: argparse.ArgumentParser) -> None:
    """``--images`` (default: all but the held-out ones), ``--seed`` (noise) and ``--threads`` (0: torch's default)."""
    parser.add_argument("--images", nargs="+", default=[k for k in IMAGES if k not in HELD_OUT], choices=list(IMAGES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)


def gat(y: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """Generalised Anscombe transform of ``y = alpha * Poisson + N(0, sigma^2)``: noise std about 1 after it."""
    return 2.0 * np.sqrt(np.maximum(y / alpha + 3.0 / 8.0 + (sigma / alpha) ** 2, 0.0))


def inverse_gat(z: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Mäkitalo & Foi 2013), back to ``y`` units."""
    z = np.maximum(z, 1.0)
    s = np.sqrt(1.5)
    exact = 0.25 * z**2 + 0.25 * s / z - 11.0 / 8.0 / z**2 + 5.0 / 8.0 * s / z**3 - 1.0 / 8.0
    return (np.maximum(exact - (sigma / alpha) ** 2, 0.0) * alpha).astype(np.float32)


def noise_bound(clean: np.ndarray, factor: int = 2) -> dict:
    """How close any x``factor`` super-resolution can come to ``clean`` when ``clean`` itself holds white noise.

    The references are recorded images with their own shot noise. Its standard deviation is
    estimated robustly from the diagonal 2 x 2 Haar details (median absolute deviation x 1.4826,
    which smooth signal hardly reaches). Area downscaling keeps the block means; the other
    ``1 - 1/factor**2`` of the noise energy cannot be predicted from the small image by any
    method, so the PSNR cannot exceed ``10 log10(range**2 / ((1 - 1/f**2) sigma**2))`` (an
    optimistic bound: detail of the signal lost in the blocks is not counted).
    """
    ny, nx = (s // 2 * 2 for s in clean.shape)
    q = clean[:ny, :nx].astype(np.float64).reshape(ny // 2, 2, nx // 2, 2)
    detail = (q[:, 0, :, 0] - q[:, 0, :, 1] - q[:, 1, :, 0] + q[:, 1, :, 1]) / 2.0
    sigma = float(np.median(np.abs(detail - np.median(detail))) * 1.4826)
    unpredictable = (1.0 - 1.0 / factor**2) * sigma**2
    psnr = float(10.0 * np.log10(float(np.ptp(clean)) ** 2 / unpredictable)) if unpredictable > 0 else float("inf")
    return {"noise_sigma": round(sigma, 5), "psnr_bound": round(psnr, 2)}


# ---------------------------------------------------------------------------------------------- methods


def run_nlm(noisy, dose, read, **_):
    from skimage.restoration import denoise_nl_means

    alpha = 1.0 / dose
    z = gat(noisy, alpha, read)
    out = denoise_nl_means(z, h=0.8, sigma=1.0, patch_size=5, patch_distance=6, fast_mode=True)
    return inverse_gat(out, alpha, read)


def run_bm3d(noisy, dose, read, **_):
    import bm3d

    alpha = 1.0 / dose
    z = gat(noisy, alpha, read)
    return inverse_gat(np.asarray(bm3d.bm3d(z, sigma_psd=1.0), np.float32), alpha, read)


def run_n2v(noisy, args, epochs=None, **_):
    import logging
    import tempfile

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    from careamics import CAREamist
    from careamics.config import create_n2v_config

    config = create_n2v_config(experiment_name="n2v_benchmark", data_type="array", axes="YX", patch_size=[64, 64],
                               batch_size=16, num_epochs=epochs or args.n2v_epochs, num_steps=args.n2v_steps)
    with tempfile.TemporaryDirectory() as work:
        model = CAREamist(config, work_dir=work, enable_progress_bar=False)
        model.train(train_data=noisy)
        pred, _ = model.predict(noisy, tile_size=(256, 256), tile_overlap=(48, 48))
    return np.asarray(pred[0] if isinstance(pred, list) else pred, np.float32).reshape(noisy.shape)


def run_ours(noisy, args, init=None, **_):
    """Fine-tune with the task's defaults, predict; with ``--tta`` also the 8-view average (row ``<method>_tta``)."""
    config = FinetuneConfig(task=args.task, arch=args.arch, arch_kwargs=args.arch_kwargs, init=init or args.init, device=args.device, preview_every_s=0, steps=args.steps, seed=args.seed,
                            mask_fraction=args.mask_fraction, mask_replace=args.mask_replace, denoise_loss=args.denoise_loss,
                            mean_correction=args.mean_correction, leak_correction=args.leak_correction,
                            lattice_pairs=args.lattice_pairs)
    result = api.finetune(noisy, config=config)
    out = api.predict(result.model, noisy, PredictConfig(device=args.device, tta=False))
    extra = {"init": result.model.meta["lineage"]["init"].get("init"), "steps": result.steps,
             **({"back_projection": result.model.meta.get("back_projection", 0)} if args.task == "superres" else {}),
             "train_seconds": round(result.seconds, 1), "predict_seconds": round(out.seconds, 1),
             **({"leak_share": out.info["leak_shares"][0]} if out.info.get("leak_shares") else {})}
    if args.tta:
        tta = api.predict(result.model, noisy, PredictConfig(device=args.device, tta=True))
        extra["_tta"] = (tta.image, tta.seconds)
        if tta.info.get("leak_shares"):
            extra["leak_share_tta"] = tta.info["leak_shares"][0]
    if args.stack:  # what a stack gets by default: the image as a one-slice stack
        stack = api.predict(result.model, noisy[None], PredictConfig(device=args.device))
        extra["_stack"] = (stack.image[0], stack.seconds)
    if args.jinv:
        extra["_jinv"] = j_invariant_predict(result.model, noisy, args)
    return out.image, extra


def j_invariant_predict(model, noisy: np.ndarray, args) -> np.ndarray:
    """Each pixel predicted with itself hidden, as in training (Noise2Self's J-invariant inference, one view).

    The pixels of every cell of the blind-spot grid (``s x s``, ``s`` from the mask fraction) are
    hidden together, shown as in training (the mean of the 8 neighbours, or one of them at random),
    and the prediction kept at those pixels: ``s**2`` passes. Against plain inference it shows how
    much of a pixel's own noise a blind-spot network lets through when it sees the pixel.
    """
    from napari_emssl.tasks.denoise import cell_size

    s = cell_size(args.mask_fraction)
    h, w = noisy.shape
    padded = np.pad(noisy, 1, mode="reflect")
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    neighbours = np.stack([padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in shifts])
    if args.mask_replace == "mean":
        shown = neighbours.mean(axis=0)
    else:
        pick = np.random.default_rng(args.seed).integers(0, 8, size=(h, w))
        shown = np.take_along_axis(neighbours, pick[None], axis=0)[0]
    out = np.empty_like(noisy)
    for oy in range(s):
        for ox in range(s):
            hidden = np.zeros((h, w), bool)
            hidden[oy::s, ox::s] = True
            pred = api.predict(model, np.where(hidden, shown, noisy).astype(np.float32),
                               PredictConfig(device=args.device, tta=False)).image
            out[hidden] = pred[hidden]
    return out


def default_denoiser(noisy: np.ndarray, name: str, seed: int, model_dir: Path | None = None,
                     save_dir: Path | None = None):
    """``emssl finetune --task denoise`` defaults on ``noisy``, or the model saved for ``name`` / ``seed`` in
    ``model_dir`` (training is deterministic at a fixed thread count); saved to ``save_dir`` when given."""
    from napari_emssl.engine.model_dir import load_model

    if model_dir:
        return load_model(model_dir / f"{name}_{seed}", task="denoise")
    model = api.finetune(noisy, config=FinetuneConfig(task="denoise", device="cpu", preview_every_s=0, seed=seed)).model
    if save_dir:
        model.save(save_dir / f"{name}_{seed}")
    return model


def run_bicubic(low, **_):
    return upscale_bicubic(low, 2)


BACK_PROJECTION_STEPS = 20


def run_back_projection(low, factor: int = 2, steps: int = BACK_PROJECTION_STEPS, **_):
    """Iterative back-projection (Irani & Peleg 1991): ``x <- x + bicubic(low - area_downscale(x))`` from bicubic.

    A classic that knows the degradation (area averaging) as ours does: after it, the result's
    ``factor x factor`` block means are (nearly) the input's, with the detail bicubic would give.
    The package's own step (``superres.back_project``), started from bicubic upsampling.
    """
    return superres.back_project(upscale_bicubic(low, factor), low, factor, steps)


def device_text() -> str:
    """This machine's CPU and torch, as the result files record it."""
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


DEFAULT_DENOISERS = ("noisy", "nlm", "bm3d", "n2v", "ours", "ours_random")
DENOISERS = {"noisy": lambda noisy, **_: noisy, "nlm": run_nlm, "bm3d": run_bm3d, "n2v": run_n2v,
             "n2v_long": lambda noisy, args, **kw: run_n2v(noisy, args, epochs=args.n2v_long_epochs),
             "ours": run_ours, "ours_random": lambda noisy, args, **kw: run_ours(noisy, args, init="random")}
UPSCALERS = {"bicubic": run_bicubic, "back_projection": run_back_projection, "ours": lambda low, args, **_: run_ours(low, args),
             "ours_random": lambda low, args, **_: run_ours(low, args, init="random")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("denoise", "superres"), required=True)
    parser.add_argument("--images", nargs="+", default=[k for k in IMAGES if k not in HELD_OUT], choices=list(IMAGES),
                        help=f"default: every image but the held-out ones ({', '.join(HELD_OUT)})")
    parser.add_argument("--methods", nargs="+", help="default: all of the task's methods")
    parser.add_argument("--dose", type=float, default=DOSE, help="electrons per unit intensity (default 20)")
    parser.add_argument("--read", type=float, default=READ, help="Gaussian read noise, unit intensity (default 0.02)")
    parser.add_argument("--steps", type=int, default=None, help="our fine-tuning steps (default: the task's default)")
    parser.add_argument("--n2v-epochs", type=int, default=10)
    parser.add_argument("--n2v-steps", type=int, default=60, help="batches per N2V epoch")
    parser.add_argument("--n2v-long-epochs", type=int, default=100, help="epochs of the n2v_long method (about our wall time)")
    parser.add_argument("--mask-fraction", type=float, default=FinetuneConfig.mask_fraction,
                        help="blind-spot fraction of our denoiser (default: the package default)")
    parser.add_argument("--mask-replace", choices=MASK_REPLACEMENTS, default=FinetuneConfig.mask_replace,
                        help="what a blind-spot pixel of our denoiser shows (default: the package default)")
    parser.add_argument("--denoise-loss", choices=DENOISE_LOSSES, default=FinetuneConfig.denoise_loss,
                        help="training loss of our denoiser (default: the package default)")
    parser.add_argument("--mean-correction", type=float, default=FinetuneConfig.mean_correction,
                        help="low-pass sigma (px) of our denoiser's mean correction, 0: off (default: the package default)")
    parser.add_argument("--leak-correction", type=leak_share, default=FinetuneConfig.leak_correction,
                        help="share of the own-pixel weight our denoiser takes out after prediction, 0: off, auto: "
                             "chosen per image (default: the package default)")
    parser.add_argument("--lattice-pairs", action="store_true",
                        help="superres: ours learns from synthetic atom-column lattices (emssl finetune --lattice-pairs)")
    parser.add_argument("--tta", action="store_true", help="also score our models with the 8-view test-time average")
    parser.add_argument("--stack", action="store_true",
                        help="also score our models as a stack gets them by default (row <method>_stack: the image as a "
                             "one-slice stack)")
    parser.add_argument("--jinv", action="store_true",
                        help="denoise: also score our models with each pixel predicted while hidden (rows <method>_jinv)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default="bundled",
                        help="where the ours rows start: bundled (default) or a pretrained model directory, e.g. one "
                             "pretrained without the benchmark images (ours_random always starts from random weights)")
    parser.add_argument("--arch", help="architecture of the ours rows (default: the task's); bundled weights for it "
                                       "when there are any (`emssl models`)")
    parser.add_argument("--arch-kwargs", type=json.loads, default={}, metavar="JSON",
                        help='options of --arch, e.g. \'{"refine_channels": 0}\' (bundled weights only for the defaults)')
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/restoration_<task>.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = DENOISERS if args.task == "denoise" else UPSCALERS
    chosen = args.methods or (list(DEFAULT_DENOISERS) if args.task == "denoise" else list(methods))
    out_path = args.out or HERE / "results" / f"restoration_{args.task}.json"
    rows, bounds = [], {}
    for name in args.images:
        clean = load_clean(name)
        if args.task == "denoise":
            given = add_noise(clean, args.dose, args.read, args.seed)
        else:
            given = downscale_area(clean, 2)
            bounds[name] = noise_bound(clean, 2)
        for method in chosen:
            started = time.perf_counter()
            out = methods[method](given, args=args, dose=args.dose, read=args.read) if method != "noisy" else given
            extra = {}
            if isinstance(out, tuple):
                out, extra = out
            seconds = time.perf_counter() - started
            tta, jinv, stack = extra.pop("_tta", None), extra.pop("_jinv", None), extra.pop("_stack", None)
            outputs = [(method, out, seconds - (tta[1] if tta else 0.0) - (stack[1] if stack else 0.0))]
            if tta is not None:
                outputs.append((f"{method}_tta", tta[0], seconds - extra.get("predict_seconds", 0.0)
                                - (stack[1] if stack else 0.0)))
            if jinv is not None:
                outputs.append((f"{method}_jinv", jinv, seconds))
            if stack is not None:
                outputs.append((f"{method}_stack", stack[0], seconds - extra.get("predict_seconds", 0.0)
                                - (tta[1] if tta else 0.0)))
            for label, image, secs in outputs:
                scores = restoration_metrics(clean, np.asarray(image, np.float32), float(np.ptp(clean)))
                row = {"image": name, "method": label, "psnr": round(scores["psnr"], 3), "ssim": round(scores["ssim"], 4),
                       "seconds": round(secs, 1), "shape": list(clean.shape), **extra}
                rows.append(row)
                print(json.dumps(row), flush=True)
            # written after every method: a long run that is stopped keeps what it measured
            out_path.write_text(json.dumps({
                "task": args.task, "images": {k: IMAGES[k][1] for k in args.images}, "dose": args.dose, "read": args.read,
                "steps": args.steps or FinetuneConfig(task=args.task).default_steps, "n2v": {"epochs": args.n2v_epochs,
                "steps_per_epoch": args.n2v_steps, "long_epochs": args.n2v_long_epochs, "batch": 16, "patch": 64},
                "seed": args.seed, "mask_fraction": args.mask_fraction, "mask_replace": args.mask_replace,
                "denoise_loss": args.denoise_loss, "mean_correction": args.mean_correction, "leak_correction": args.leak_correction,
                "lattice_pairs": args.lattice_pairs, "arch": args.arch, "arch_kwargs": args.arch_kwargs, "held_out": [k for k in args.images if k in HELD_OUT],
                "not_pretrained_on": [k for k in args.images if k in NOT_PRETRAINED_ON],
                "device": (f"{torch.cuda.get_device_name()} (cuda), host " if args.device.startswith("cuda") else "")
                + device_text(),
                **({"noise_bound": bounds} if bounds else {}),
                "package_version": __version__, "command": "python benchmarks/restoration.py " + shlex.join(sys.argv[1:]),
                "rows": rows,
            }, indent=1) + "\n")


if __name__ == "__main__":
    main()
