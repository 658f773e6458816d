"""What each ``emssl`` sub-command does (parsing lives in :mod:`napari_emssl.cli`)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from . import api
from .cli import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK
from .config import FinetuneConfig, PredictConfig, PretrainConfig
from .engine.cancel import CancelToken
from .engine.events import PredictionTile, Preview, RunCancelled, RunFinished, RunStarted, StepEnd
from .errors import InputError
from .io import read_image, write_image
from .tasks.denoise_corrections import leak_share_text


class Progress:
    """A one-line progress bar on stderr (tqdm), fed by run events."""

    def __init__(self, desc: str, quiet: bool = False) -> None:
        self.desc, self.quiet, self.bar = desc, quiet, None

    def __call__(self, event) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if isinstance(event, RunStarted):
            self.bar = tqdm(total=event.total_steps, desc=f"{self.desc} [{event.device}]", unit="step" if event.kind != "predict" else "tile",
                            file=sys.stderr, dynamic_ncols=True)
        elif isinstance(event, StepEnd) and self.bar is not None:
            self.bar.n = event.step
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in event.losses.items() if k == "loss"}, refresh=False)
            self.bar.refresh()
        elif isinstance(event, PredictionTile) and self.bar is not None:
            self.bar.total = event.total
            self.bar.n = event.done
            self.bar.refresh()
        elif isinstance(event, (RunFinished, RunCancelled)) and self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def ctrl_c_cancels(token: CancelToken):
    """First Ctrl-C asks the run to stop (it then keeps what it has); a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        print("\nemssl: stopping after this step (Ctrl-C again to abort)...", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_tifffile() -> None:
    import logging

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _arch_kwargs(text: str | None, option: str = "--arch-kwargs") -> dict:
    """``--arch-kwargs`` JSON -> dict (an InputError with the reason when it is not a JSON object)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option} is not valid JSON ({exc.msg}); expected e.g. '{{\"base_channels\": 8}}'") from None
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object such as '{{\"base_channels\": 8}}', got {text!r}")
    return value


def _check_out_dir(path: str) -> None:
    """Fail before training, not after it, when ``--out`` cannot become a model directory."""
    import os

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"--out '{path}' is a file; expected a folder for the model directory")
    parent = target
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the model directory '{path}': '{parent}' is not a writable folder")


def pretrain(args) -> int:
    """Self-supervised pretraining; under torchrun every process runs this, rank 0 reports."""
    import os

    _quiet_tifffile()
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        _check_out_dir(args.out)
    config = PretrainConfig(
        method=args.method, arch=args.arch, arch_kwargs=_arch_kwargs(args.arch_kwargs),
        method_options=_arch_kwargs(args.method_options, "--method-options"), steps=args.steps, epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch, batch_size=args.batch_size, patch=args.patch, lr=args.lr,
        device=args.device, amp=not args.no_amp, compile=args.compile, seed=args.seed, num_workers=args.workers,
        preview_every_s=0, checkpoint_every_s=args.checkpoint_every,
    )
    token = CancelToken()
    progress = Progress("pretrain", args.quiet or not main_rank)

    def on_event(event) -> None:
        if main_rank and isinstance(event, RunStarted):
            info = event.info
            for note in info.get("notes", []):
                print(f"emssl: note: {note}", file=sys.stderr)
            if not args.quiet:
                print(f"pretraining {info['method']} / {info['arch']} on {info['images']} image(s), {info['world_size']} "
                      f"process(es), global batch {info['global_batch']}", file=sys.stderr)
        progress(event)

    import warnings

    with ctrl_c_cancels(token), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped images are reported as notes
        last = api.run_to_end(api.iter_pretrain(args.data, config, args.out, token, resume=args.resume), on_event)
    result = last.result
    if isinstance(last, RunCancelled):
        if main_rank:
            print(f"emssl: cancelled at step {result.steps}; the checkpoint and the model so far are in {result.model_dir} "
                  "(continue with --resume)", file=sys.stderr)
        return EXIT_CANCELLED
    if main_rank:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
        print(f"pretrained model written to {result.model_dir} ({result.steps} steps, {result.seconds:.1f} s, "
              f"{result.images_per_s:.1f} patches/s; {losses})")
    return EXIT_OK


def describe_init(info: dict) -> str:
    """One line on where the fine-tuned network's weights came from (RunStarted info of a fine-tune)."""
    if info.get("init_note"):
        return f"{info['init_note']}; starting from random weights"
    if info.get("init") == "random" or "matched_tensors" not in info:
        return "starting from random weights"
    origin = info["init"]
    if info.get("pretrain_method"):
        origin += f" ({info['pretrain_method']} pretraining, {info.get('pretrain_steps')} steps)"
    return f"starting from {origin}: {info['matched_tensors']} of {info['total_tensors']} tensors loaded"


def finetune(args) -> int:
    _quiet_tifffile()
    segment = args.task == "segment"
    if segment and not args.labels:
        raise InputError("--labels is needed for segmentation: a label image with a few painted strokes")
    if not segment and args.labels:
        raise InputError(f"--labels is for segmentation; {args.task} learns from the image itself (or a --target)")
    if segment and args.target:
        raise InputError("--target is for the restoration tasks (denoise, bgremove, superres); segmentation uses --labels")
    _check_out_dir(args.out)
    image, meta = read_image(args.image)
    labels = read_image(args.labels)[0] if args.labels else None
    target = read_image(args.target)[0] if args.target else None
    config = FinetuneConfig(
        task=args.task, arch=args.arch, arch_kwargs=_arch_kwargs(args.arch_kwargs), init=args.init, steps=args.steps,
        epochs=args.epochs, batch_size=args.batch_size, patch_size=args.patch_size, lr=args.lr, seed=args.seed,
        device=args.device, preview_every_s=0, factor=args.factor, mask_fraction=args.mask_fraction,
        mask_replace=args.mask_replace, denoise_loss=args.denoise_loss, mean_correction=args.mean_correction,
        leak_correction=args.leak_correction,
        back_projection=args.back_projection, lattice_pairs=args.lattice_pairs,
    )
    token = CancelToken()
    progress = Progress("fine-tune", args.quiet)

    def on_event(event) -> None:
        if isinstance(event, RunStarted) and not args.quiet:
            print(f"emssl: {describe_init(event.info)}", file=sys.stderr)
            if not segment:
                print(f"emssl: {args.task}, {event.info.get('mode')}", file=sys.stderr)
        progress(event)

    with ctrl_c_cancels(token):
        last = api.run_to_end(
            api.iter_finetune(image, labels, config, target=target, cancel=token, out_dir=args.out, source=str(args.image)),
            on_event)
    result = last.result
    if isinstance(last, RunCancelled):
        print(f"emssl: cancelled at step {result.steps}; the model trained so far is in {result.model_dir}", file=sys.stderr)
        return EXIT_CANCELLED
    metrics = result.model.meta.get("metrics", {})
    if segment:
        quality = f"Dice on the painted pixels: {json.dumps(metrics.get('train_painted_dice', {}))}"
    elif "psnr" in metrics:
        base = "bicubic" if "bicubic_psnr" in metrics else "input"
        quality = (f"against the target: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} "
                   f"({base}: {metrics[base + '_psnr']:.2f} dB, {metrics[base + '_ssim']:.3f})")
    else:
        quality = f"final loss {result.model.log[-1]['loss']:.4g}" if result.model.log else "no steps"
    print(f"model written to {result.model_dir} ({result.steps} steps, {result.seconds:.1f} s; {quality})")
    return EXIT_OK


def predict(args) -> int:
    """Apply a model to files, folders or globs; each result streamed to disk slice by slice (see batch)."""
    _quiet_tifffile()
    from .batch import iter_predict_files
    from .engine.device import resolve_device
    from .engine.events import FileEnded, FileStarted
    from .engine.model_dir import load_model

    config = PredictConfig(device=args.device, tile=args.tile, batch_size=args.batch_size, probabilities=args.probabilities,
                           keep_dtype=args.keep_dtype, tta=args.tta, compile=args.compile,
                           z_average=args.z_average, leak_correction=args.leak_correction)
    resolve_device(config.device)  # a device that is not there fails once, before any input is read
    model = load_model(args.model)
    if args.target:
        return _predict_scored(args, model, config)
    token = CancelToken()
    progress: Progress | None = None

    def on_event(event) -> None:
        nonlocal progress
        if isinstance(event, FileStarted):
            progress = Progress(f"[{event.index + 1}/{event.count}] {Path(event.path).name}", args.quiet)
        elif isinstance(event, FileEnded):
            if progress is not None and progress.bar is not None:
                progress.bar.close()
            if event.status == "done":
                print(f"{event.path} -> {event.output} ({event.seconds:.1f} s{'; ' + event.note if event.note else ''})")
            elif event.status == "skipped":
                print(f"{event.path}: skipped, {event.reason}")
            elif event.status == "failed":
                where = "" if event.path in event.reason else f"{event.path}: "
                print(f"emssl: error: {where}{event.reason}", file=sys.stderr)
        elif progress is not None and not isinstance(event, (RunFinished, RunCancelled)):
            progress(event)

    with ctrl_c_cancels(token):
        last = api.run_to_end(iter_predict_files(model, args.input, args.out, config, fmt=args.format,
                                                 overwrite=args.overwrite, cancel=token), on_event)
    summary = last.result
    if isinstance(last, RunCancelled):
        print(f"emssl: cancelled; {len(summary.done)} file(s) done, their outputs complete; nothing half-written was kept",
              file=sys.stderr)
        return EXIT_CANCELLED
    if len(summary.done) + len(summary.skipped) + len(summary.failed) > 1:
        print(f"{summary.line()}")
    return EXIT_ERROR if summary.failed else EXIT_OK


def _predict_scored(args, model, config: PredictConfig) -> int:
    """One input scored against ``--target`` (PSNR, SSIM): predicted in memory, then written."""
    from .batch import expand_inputs, output_paths
    from .tasks.superres import output_scale

    inputs = expand_inputs(args.input)
    if len(inputs) != 1:
        raise InputError("--target scores one input; give a single --input with it")
    target_path = output_paths(inputs, args.out, model.task, "tif")[0]
    if target_path.exists() and not args.overwrite:
        print(f"{inputs[0]}: skipped, the output exists already (--overwrite to replace it)")
        return EXIT_OK
    image, meta = read_image(inputs[0])
    token = CancelToken()
    with ctrl_c_cancels(token):
        last = api.run_to_end(api.iter_predict(model, image, config, target=read_image(args.target)[0], cancel=token),
                              Progress(inputs[0].name, args.quiet))
    if isinstance(last, RunCancelled):
        print("emssl: cancelled; nothing written", file=sys.stderr)
        return EXIT_CANCELLED
    result = last.result
    scale = output_scale(meta.scale, result.scale_factor) if meta.scale is not None else None
    write_image(target_path, result.image if result.image is not None else result.labels, scale=scale)
    if result.info.get("clipped_pixels"):
        print(f"emssl: note: {result.info['clipped_pixels']} pixel(s) were outside the range of {image.dtype} and were clipped",
              file=sys.stderr)
    scores = f" (PSNR {result.metrics['psnr']:.2f} dB, SSIM {result.metrics['ssim']:.3f})" if result.metrics else ""
    leak = f"; {leak_share_text(result.info['leak_shares'])}" if result.info.get("leak_shares") else ""
    print(f"{inputs[0]} -> {target_path}{scores}{leak}")
    return EXIT_OK


def models(args) -> int:
    from .engine.model_dir import load_model
    from .models import list_models
    from .zoo import list_bundled

    print("architectures:")
    for info in list_models():
        print(f"  {info.name:<22} {info.family:<8} receptive field {info.receptive_field:>5} px  {info.description}")
    bundled = list_bundled()
    print("bundled pretrained weights:" + ("" if bundled else " none in this version"))
    for entry in bundled:
        print(f"  {entry.name:<22} {entry.arch:<22} {entry.method:<8} {entry.card.get('steps', '?')} steps, "
              f"tasks: {', '.join(entry.tasks)}" + (f" ({entry.card['task_note']})" if entry.card.get("task_note") else ""))
    if args.dir:
        print(f"model directories below {args.dir}:")
        from .engine.checkpoint import is_pretrained_dir, read_pretrained

        for meta_path in sorted(Path(args.dir).rglob("model.json")):
            if is_pretrained_dir(meta_path.parent):
                try:
                    meta, _ = read_pretrained(meta_path.parent)
                    steps = meta.get("lineage", {}).get("pretrain", {}).get("steps")
                    print(f"  {meta_path.parent}  pretrain {meta['arch']:<22} method {meta.get('method')}, {steps} steps")
                except Exception as exc:  # noqa: BLE001 - list what is wrong, keep listing
                    print(f"  {meta_path.parent}  unreadable: {exc}")
                continue
            try:
                m = load_model(meta_path.parent)
                print(f"  {meta_path.parent}  {m.meta['task']:<8} {m.meta['arch']:<22} classes {m.classes}")
            except Exception as exc:  # noqa: BLE001 - list what is wrong, keep listing
                print(f"  {meta_path.parent}  unreadable: {exc}")
    return EXIT_OK


def demo(args) -> int:
    """Fine-tune on the sample strokes, segment the whole sample stack, score against its mask."""
    from .sample import CITATION, load_sstem_sample
    from .tasks.segmentation import dice_per_class

    sample = load_sstem_sample()
    out = Path(args.out)
    print(f"sample data: {sample.image.shape} ssTEM crop ({CITATION})")
    config = FinetuneConfig(steps=args.steps, arch=args.arch, arch_kwargs=_arch_kwargs(args.arch_kwargs), device=args.device,
                            preview_every_s=0)
    token = CancelToken()
    with ctrl_c_cancels(token):
        last = api.run_to_end(
            api.iter_finetune(sample.image, sample.strokes, config, cancel=token, out_dir=str(out / "model"), source="sample"),
            Progress("fine-tune", args.quiet),
        )
        if isinstance(last, RunCancelled):
            return EXIT_CANCELLED
        pred = api.run_to_end(api.iter_predict(last.result.model, sample.image, PredictConfig(device=args.device), cancel=token),
                              Progress("predict", args.quiet))
    if isinstance(pred, RunCancelled):
        return EXIT_CANCELLED
    write_image(out / "sstem_crop.tif", sample.image, scale=sample.scale)
    write_image(out / "sstem_prediction.tif", pred.result.labels, scale=sample.scale)
    unpainted = slice(1, None)  # strokes are on slice 0 only
    dice = dice_per_class(pred.result.labels[unpainted], sample.truth[unpainted], [2])[2]
    print(f"fine-tuned in {last.result.seconds:.0f} s; mitochondria Dice on the 4 unpainted slices: {dice:.3f}")
    print(f"written: {out / 'model'}, {out / 'sstem_prediction.tif'}")
    return EXIT_OK


__all__ = ["pretrain", "finetune", "predict", "models", "demo", "Preview"]
