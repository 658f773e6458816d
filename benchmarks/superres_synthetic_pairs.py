"""Super-resolution x2 of atomic lattices: synthetic lattice pairs instead of (or beside) the image's own.

    EMSSL_DATA=../shared/data PYTHONPATH=src python benchmarks/superres_synthetic_pairs.py \\
        --image stem_adf --share 1 --out benchmarks/results/superres_synthetic_pairs_stem_adf_1.json

The self-supervised pairs of ``emssl finetune --task superres`` downscale the user's image
once more: an atomic lattice does not look alike one scale up (its columns keep their size in
pixels of the specimen, not of the image), which is why ours loses against bicubic on
stem_adf. Here a share ``--share`` of each batch is synthetic instead: clean atom-column
scenes (``napari_emssl.data.synthetic``: lattices, grain boundaries, amorphous regions,
backgrounds) with lattice constants matched to the image, area-downscaled by 2 as the input
and the scene itself as the target, each pair normalised like a user image. The lattice
period is found in the small image (``bgremove.estimate_spacing``, the same function that
adapts the bundled background-removal pairs) and the synthetic high-resolution scenes get
constants of 0.8 to 1.4 times twice that period: the scale the network is applied at.
``--share 0`` is the package's own training. Everything else is the package's (``api.finetune``,
bundled weights, 600 steps, seed 0): this script only wraps the function that makes the pairs.

Each network is applied to the small image (one view, and the 8-view average) without the
back-projection the package adds after prediction (``ours``, ``ours_tta``) and as ``emssl
predict`` gives it, with the model's back-projection steps (``_bp``: ``x <- x + bicubic(low -
area_downscale(x))``, which makes the result's 2 x 2 block means the input's, as the
back_projection baseline does from bicubic). Scored as the main
super-resolution table (same reference, area downscaling by 2, PSNR over the data range of
the reference).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from superres_pair_factors import bicubic_to, box_down  # noqa: E402
from restoration import HELD_OUT, IMAGES, device_text, load_clean, run_back_projection  # noqa: E402

from napari_emssl.engine.model_dir import TrainedModel  # noqa: E402

from napari_emssl import api  # noqa: E402
from napari_emssl.config import FinetuneConfig, PredictConfig  # noqa: E402
from napari_emssl.data.degrade import downscale_area, upscale_bicubic  # noqa: E402
from napari_emssl.data.normalize import percentile_normalize  # noqa: E402
from napari_emssl.data.synthetic import SynthSettings  # noqa: E402
from napari_emssl.tasks import bgremove, superres  # noqa: E402
from napari_emssl.tasks.denoise_corrections import noise_variance  # noqa: E402
from napari_emssl.tasks.metrics import restoration_metrics  # noqa: E402
from napari_emssl.tasks.superres_lattice import lattice_pairs  # noqa: E402
from napari_emssl.tasks.restoration import restoration_loss, to_tensor  # noqa: E402

FACTOR = 2


def noise_fit(plane: np.ndarray) -> tuple[float, float]:
    """``(slope, offset)`` of the plane's noise variance against its level (``denoise_corrections.noise_variance``)."""
    level = ndimage.gaussian_filter(plane.astype(np.float64), 1.0)
    variance = noise_variance(plane, level)
    slope, offset = np.polyfit(level.ravel()[::7], variance.ravel()[::7], 1)
    return float(slope), float(offset)


def add_noise(low: torch.Tensor, fit: tuple[float, float] | None, share: float) -> torch.Tensor:
    """``low`` plus Gaussian noise of ``share`` times the image's noise variance at each pixel's level."""
    if fit is None or share <= 0:
        return low
    variance = (fit[0] * low + fit[1]).clamp_min(0.0) * share
    return low + torch.randn_like(low) * variance.sqrt()


def mixed_loss_factory(share: float, settings: SynthSettings, seed: int, fit: tuple[float, float] | None = None,
                       smin: float = FACTOR):
    """A stand-in for ``superres.make_superres_loss_fn`` whose batches are ``share`` synthetic, the rest the image's own.

    ``fit`` (``noise_fit`` of the normalised small image): the inputs get noise so that theirs
    matches the small image's: 3/4 of its variance on the image's own pairs (area downscaling by
    2 already leaves a quarter of it), all of it on the clean synthetic scenes. ``smin`` below
    2: the image's own pairs are made at a factor drawn from ``[smin, 2]`` per batch
    (``superres_pair_factors.py``), upsampled back bicubically to the patch size.
    """
    rng = np.random.default_rng(seed)

    def make(sample, batch_size, device, factor=FACTOR, *, paired=False):
        synthetic = int(round(share * batch_size))

        def loss_fn(net):
            ups, highs, size = [], [], None
            if batch_size - synthetic:
                x, _ = sample(batch_size - synthetic)
                high = to_tensor(x, device)
                size = x.shape[-1]
                if smin < factor:
                    n = max(8, int(round(size / rng.uniform(smin, factor))))
                    ups.append(bicubic_to(box_down(high, n, n), high.shape[-2:]))
                else:
                    low, high = superres.superres_pair(high, factor)
                    ups.append(superres.upsample_bicubic(add_noise(low, fit, 1.0 - 1.0 / factor**2), factor))
                highs.append(high)
            if synthetic:
                low, high = lattice_pairs(rng, settings, synthetic, size or 128, factor)
                ups.append(superres.upsample_bicubic(add_noise(to_tensor(low, device), fit, 1.0), factor))
                highs.append(to_tensor(high, device))
            up, high = torch.cat(ups), torch.cat(highs)
            losses = restoration_loss(up + net(up), high)
            losses["bicubic_l1"] = torch.nn.functional.l1_loss(up, high).detach()
            return losses

        return loss_fn

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", choices=list(IMAGES), required=True)
    parser.add_argument("--share", type=float, default=1.0, help="share of each batch made of synthetic pairs (0: the package's)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--smin", type=float, default=FACTOR, help="the image's own pairs at factors drawn from [smin, 2]")
    parser.add_argument("--match-noise", choices=["off", "image", "reference"], default="off",
                        help="give the training inputs the small image's noise level, estimated on the small image "
                             "or (an oracle no user has) on the reference, a quarter of its variance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clean = load_clean(args.image)
    clean = clean[: clean.shape[0] // FACTOR * FACTOR, : clean.shape[1] // FACTOR * FACTOR]
    low = downscale_area(clean, FACTOR)
    period = bgremove.estimate_spacing(percentile_normalize(low)[0])
    settings = SynthSettings()
    if period is not None:
        settings = dataclasses.replace(settings, spacing=(FACTOR * 0.8 * period, FACTOR * 1.4 * period))
    if args.share and period is None:
        raise SystemExit(f"no lattice period found in {args.image}")
    started = time.perf_counter()
    package_loss = superres.make_superres_loss_fn
    fit = None
    if args.match_noise == "image":
        fit = noise_fit(percentile_normalize(low)[0])
    elif args.match_noise == "reference":
        stats = percentile_normalize(low)[1]
        fit = tuple(v / FACTOR**2 for v in noise_fit(percentile_normalize(clean, stats=stats)[0]))
    superres.make_superres_loss_fn = mixed_loss_factory(args.share, settings, args.seed, fit, args.smin)
    try:
        config = FinetuneConfig(task="superres", device="cpu", preview_every_s=0, seed=args.seed, steps=args.steps)
        result = api.finetune(low, config=config)
    finally:
        superres.make_superres_loss_fn = package_loss
    train_seconds = time.perf_counter() - started
    data_range = float(np.ptp(clean))

    def psnr(image: np.ndarray) -> float:
        return round(restoration_metrics(clean, np.asarray(image, np.float32), data_range)["psnr"], 3)

    scores = {"bicubic": psnr(upscale_bicubic(low, FACTOR)), "back_projection": psnr(run_back_projection(low, FACTOR))}
    bare = TrainedModel(net=result.model.net, meta={**result.model.meta, "back_projection": 0})
    for name, tta in (("ours", False), ("ours_tta", True)):  # the network alone; then as emssl predict gives it
        scores[name] = psnr(api.predict(bare, low, PredictConfig(device="cpu", tta=tta)).image)
        scores[name + "_bp"] = psnr(api.predict(result.model, low, PredictConfig(device="cpu", tta=tta)).image)
    row = {"image": args.image, "held_out": args.image in HELD_OUT, "share": args.share, "match_noise": args.match_noise, "smin": args.smin,
           "noise_fit": list(fit) if fit else None, "period_px": period,
           "spacing_px": list(settings.spacing) if period is not None else None, "steps": result.steps,
           "train_seconds": round(train_seconds, 1), "psnr": scores,
           "device": device_text(),
           "command": "python benchmarks/superres_synthetic_pairs.py " + shlex.join(sys.argv[1:])}
    print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
