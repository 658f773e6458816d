"""Prediction throughput (megapixels/s) file to file, against a naive forward and the compute roofline; peak memory.

    .venv/bin/python benchmarks/prediction_throughput.py --device cpu --threads 2
    .venv/bin/python benchmarks/prediction_throughput.py --device cuda --slices 64 --side 2048   (on a GPU)

For the default segmentation model (``resunet_b3_rf96``, 3 classes) and the default
denoising model (same network, one output) with random weights (speed does not depend on
the weights), on a zlib-compressed uint8 TIFF stack of ``--slices`` x ``--side`` x ``--side``:

- ``end_to_end``: ``emssl predict``'s path (``batch.iter_predict_files``): the stack read
  lazily slice by slice, tiles batched, the result written to a TIFF, everything timed;
- ``tiled_in_memory``: ``api.predict`` on the stack already in memory (no file I/O);
- ``naive_full``: the same network on each whole slice at once (no tiling, no overlap, no
  reading ahead or writing behind), plus the argmax / denormalisation;
- variants of the tiled path: 512-pixel tiles; on the CPU also TorchScript (trace + freeze) and
  NCHW (contiguous) convolutions instead of the channels-last ones prediction uses; on CUDA,
  end to end, the tiles cut and blended on the host (as before they were on the GPU), tiles of
  512, 1024 and 2048 pixels, and ``torch.compile`` (compilation counted);
- on CUDA, ``network_only``: the network alone on a batch of tiles already on the GPU (bf16
  autocast, channels-last, eager and compiled): the ceiling for everything around it.

Denoising of a stack averages each slice with its mirror by default (2 network passes per
pixel, ``views``); its fraction of peak counts both passes.

The roofline: FLOPs per pixel of the network (``FlopCounterMode`` on a 256 x 256 forward,
dividing by the pixels) x pixels/s / peak. On the CPU the peak is measured: the float32
matrix-multiply rate (4096 x 4096, best of 3) on the same threads; on CUDA it is the dense
bf16 peak of the device (``--peak-tflops``, default 989 for an H100 SXM; an H200 has the same);
the bf16 rate of an 8192 x 8192 x 8192 matrix product on the device is measured and recorded too.
Peak memory: a child process streams a float32 stack whose input and outputs together are
``--memory-factor`` times ``--budget-mb`` from file to file with class probabilities and reports its peak resident memory
(``VmHWM``, reset with ``/proc/self/clear_refs``) over the loaded model (``working_mb``), and the
resident memory after every slice (its maximum over the first and the second half of the stack:
a stack's length adds nothing when they agree).
Results go to ``benchmarks/results/prediction_throughput_<device>.json`` (``--out``), rewritten after each model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_emssl import __version__, api
from napari_emssl.batch import iter_predict_files
from napari_emssl.config import PredictConfig
from napari_emssl.data.normalize import percentile_normalize
from napari_emssl.engine.device import resolve_device
from napari_emssl.engine.model_dir import TrainedModel, build_meta
from napari_emssl.models import DEFAULT_SEGMENT_ARCH, create_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def make_model(task: str) -> TrainedModel:
    torch.manual_seed(0)
    k = 3 if task == "segment" else 1
    net = create_model(DEFAULT_SEGMENT_ARCH, in_channels=1, out_channels=k)
    meta = build_meta(net, task=task, out_channels=k, classes=list(range(1, k + 1)) if task == "segment" else [],
                      normalization={"method": "percentile", "low": 1.0, "high": 99.8})
    return TrainedModel(net=net.eval(), meta=meta)


def flops_per_pixel(net: torch.nn.Module, side: int = 256) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, side, side))
    return counter.get_total_flops() / side**2


def cpu_peak_flops(threads: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.rand(4096, 4096), torch.rand(4096, 4096)
    torch.mm(a, b)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * 4096**3 / (time.perf_counter() - start))
    return best


def cuda_matmul_flops(device: torch.device) -> float:
    """Measured bf16 rate of an 8192^3 matrix product (mean of 10 after 3 warm-ups)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    return 10 * 2 * 8192**3 / (time.perf_counter() - start)


def network_only(net: torch.nn.Module, device: torch.device, tile: int, batch: int, compile_it: bool = False,
                 repeats: int = 10) -> dict:
    """Megapixels/s of the network alone on a GPU-resident batch of tiles (bf16 autocast, channels-last)."""
    net = net.to(device).to(memory_format=torch.channels_last)
    fn = torch.compile(net) if compile_it else net
    x = torch.rand(batch, 1, tile, tile, device=device).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize(device)
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    net.cpu().to(memory_format=torch.contiguous_format)
    return {"tile": tile, "batch": batch, "compiled": compile_it, "warm_up_s": round(warm, 2),
            "megapixels_per_s": repeats * batch * tile * tile / 1e6 / seconds}


@contextlib.contextmanager
def _host_tiling():
    """Tiles cut and blended on the host, one device round trip per batch (the CUDA path before device tiling)."""
    from napari_emssl.engine.predictor import TileForward

    original = TileForward.__init__

    def init(self, *args, **kwargs):
        kwargs["on_device"] = False
        original(self, *args, **kwargs)

    TileForward.__init__ = init
    try:
        yield
    finally:
        TileForward.__init__ = original


def make_stack(path: Path, slices: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    stack = np.empty((slices, side, side), np.uint8)
    for z in range(slices):  # textured, EM-like grey values (compression has something to do)
        stack[z] = np.clip(120 + 40 * np.sin(xx / (7 + z)) * np.cos(yy / 11) + rng.normal(0, 20, (side, side)), 0, 255)
    tifffile.imwrite(path, stack, compression="zlib", imagej=True, metadata={"axes": "ZYX"})
    return stack


def naive_full(model: TrainedModel, stack: np.ndarray, device: torch.device, amp: bool) -> float:
    """Seconds for whole-slice forwards (plus argmax or denormalisation), slice by slice."""
    net = model.net.to(device)
    norm, stats = percentile_normalize(stack)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
        for plane in norm:
            y = net(torch.from_numpy(plane)[None, None].to(device)).float()
            out = (y.argmax(1) + 1).to(torch.uint8) if model.task == "segment" else y * (stats.p_high - stats.p_low) + stats.p_low
            out.cpu().numpy()
    seconds = time.perf_counter() - start
    model.net.cpu()
    return seconds


class _Traced(torch.nn.Module):
    def __init__(self, net, example) -> None:
        super().__init__()
        self.traced = torch.jit.freeze(torch.jit.trace(net.eval(), example))
        self.arch_name, self.arch_kwargs = net.arch_name, net.arch_kwargs
        self.receptive_field, self.size_multiple = net.receptive_field, net.size_multiple

    def forward(self, x):
        return self.traced(x)


@contextlib.contextmanager
def _contiguous_layout():
    """Prediction with NCHW (contiguous) convolutions, as before channels-last was used on the CPU."""
    from napari_emssl.engine import predictor

    original = predictor.prefers_channels_last
    predictor.prefers_channels_last = lambda device: False
    try:
        yield
    finally:
        predictor.prefers_channels_last = original


def profile_top(fn, lines: int = 22) -> str:
    """cProfile's busiest functions (own time) of the main thread for one call of ``fn``."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(int(sys.argv[5]))
    from napari_emssl.batch import iter_predict_files
    from napari_emssl.config import PredictConfig
    from napari_emssl.engine.events import PredictionSlice
    from napari_emssl.engine.model_dir import load_model

    def status(key):  # MB; VmHWM is this process's own peak (ru_maxrss would include the parent's after fork)
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    model = load_model(sys.argv[1])
    config = PredictConfig(device=sys.argv[6], probabilities=True)
    loaded = status("VmRSS")
    list(iter_predict_files(model, [sys.argv[2]], sys.argv[4] + "-warm-up", config))
    warm_peak = status("VmHWM")
    reset_peak()
    events, rss = [], []
    for event in iter_predict_files(model, [sys.argv[3]], sys.argv[4], config):
        events.append(event)
        if isinstance(event, PredictionSlice):
            rss.append(status("VmRSS"))
    peak = status("VmHWM")
    half = len(rss) // 2
    print(json.dumps({"working_mb": max(peak, warm_peak) - loaded, "peak_rss_mb": max(peak, warm_peak),
                      "warm_up_peak_mb": warm_peak, "run_peak_mb": peak, "model_loaded_rss_mb": loaded,
                      "rss_after_slice_mb": [round(r) for r in rss], "rss_first_half_max_mb": max(rss[:half]),
                      "rss_second_half_max_mb": max(rss[half:]), "seconds": events[-1].result.seconds,
                      "done": len(events[-1].result.done)}))
""")


def peak_memory(model: TrainedModel, tmp: Path, args) -> dict:
    side = args.side
    k = int(model.meta["out_channels"])
    per_slice = side * side * (4 + 1 + 4 * k)  # float32 in; labels and class probabilities out
    slices = max(8, int(np.ceil(args.memory_factor * args.budget_mb * 2**20 / per_slice)))
    rng = np.random.default_rng(1)
    for name, n in (("mem_big.tif", slices), ("mem_small.tif", 8)):
        with tifffile.TiffWriter(tmp / name, imagej=True) as tif:
            tif.write((rng.random((side, side), np.float32) for _ in range(n)), shape=(n, side, side), dtype=np.float32,
                      metadata={"axes": "ZYX"})
    model.save(tmp / "seg-model")
    (tmp / "mem.py").write_text(MEMORY_SCRIPT)
    proc = subprocess.run([sys.executable, str(tmp / "mem.py"), str(tmp / "seg-model"), str(tmp / "mem_small.tif"),
                           str(tmp / "mem_big.tif"), str(tmp / "mem-out"), str(args.threads), args.device],
                          capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report.update(stack_shape=[slices, side, side], input_mb=slices * side * side * 4 / 2**20,
                  output_mb=slices * side * side * (1 + 4 * k) / 2**20, budget_mb=args.budget_mb)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--budget-mb", type=float, default=512.0,
                        help="memory the prediction may use over the loaded model (default 512 MB)")
    parser.add_argument("--memory-factor", type=float, default=3.0, help="stack size (in + out) / budget (default 3)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only-memory", action="store_true", help="measure memory only, into the existing results file")
    parser.add_argument("--skip-compile", action="store_true", help="CUDA: leave out the torch.compile rows")
    parser.add_argument("--profile", action="store_true", help="also record a cProfile of one end-to-end run per model")
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/results/prediction_throughput_<device>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops * 1e12
        measured = cuda_matmul_flops(device)
        peak_kind = (f"dense bf16 peak {args.peak_tflops:g} TFLOP/s (datasheet); an 8192^3 bf16 matrix product "
                     f"measured {measured / 1e12:.0f} TFLOP/s")
    else:
        name = f"{platform.machine()} CPU, {args.threads} thread(s) (os.cpu_count {os.cpu_count()})"
        peak = cpu_peak_flops(args.threads)
        peak_kind = f"measured float32 matmul rate {peak / 1e9:.1f} GFLOP/s"
    run = {"device": name, "device_type": device.type, "torch": torch.__version__, "napari_emssl": __version__,
           "peak_flops": peak, "peak_kind": peak_kind, "stack": [args.slices, args.side, args.side],
           "command": "python benchmarks/prediction_throughput.py " + " ".join(sys.argv[1:]), "models": {}}
    megapixels = args.slices * args.side * args.side / 1e6
    if device.type == "cuda":
        run["measured_matmul_flops"] = measured
    path = args.out or RESULTS / f"prediction_throughput_{device.type}.json"
    if args.only_memory:
        run = json.loads(path.read_text())
        with tempfile.TemporaryDirectory() as tmp_name:
            run["memory"] = peak_memory(make_model("segment"), Path(tmp_name), args)
        run["memory_command"] = "python benchmarks/prediction_throughput.py " + " ".join(sys.argv[1:])
        path.write_text(json.dumps(run, indent=2) + "\n")
        print("memory", run["memory"])
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stack = make_stack(tmp / "stack.tif", args.slices, args.side)
        for task in ("segment", "denoise"):
            model = make_model(task)
            fpp = flops_per_pixel(model.net)
            config = PredictConfig(device=args.device)
            api.predict(model, stack[:1, :512, :512], config)  # warm-up
            modes: dict[str, float] = {}
            out = tmp / f"out-{task}"
            modes["end_to_end"] = timed(lambda: list(iter_predict_files(model, [tmp / "stack.tif"], out, config,
                                                                        overwrite=True)))
            modes["tiled_in_memory"] = timed(lambda: api.predict(model, stack, config))
            modes["naive_full"] = naive_full(model, stack, device, config.amp)
            if device.type == "cpu":
                modes["tiled_512"] = timed(lambda: api.predict(model, stack, PredictConfig(device=args.device, tile=512)))
                traced = TrainedModel(net=_Traced(model.net, torch.zeros(4, 1, 256, 256)), meta=model.meta)
                modes["tiled_torchscript"] = timed(lambda: api.predict(traced, stack, config))
                with _contiguous_layout():
                    modes["tiled_nchw"] = timed(lambda: api.predict(model, stack, config))
            else:
                with _host_tiling():
                    modes["end_to_end_host_tiling"] = timed(lambda: list(iter_predict_files(
                        model, [tmp / "stack.tif"], out, config, overwrite=True)))
                for tile in (512, 1024, 2048):
                    tiled = config.replace(tile=tile)
                    modes[f"end_to_end_tile{tile}"] = timed(lambda: list(iter_predict_files(
                        model, [tmp / "stack.tif"], out, tiled, overwrite=True)))
                if not args.skip_compile and task == "segment":
                    compiled = config.replace(tile=1024, compile=True)
                    modes["end_to_end_compile_tile1024"] = timed(lambda: list(iter_predict_files(
                        model, [tmp / "stack.tif"], out, compiled, overwrite=True)))
            if args.profile:
                entry_profile = profile_top(lambda: list(iter_predict_files(model, [tmp / "stack.tif"], out, config,
                                                                            overwrite=True)))
                print(entry_profile, flush=True)
            views = config.view_count(stack.shape) if task != "segment" else 1
            entry = {"arch": DEFAULT_SEGMENT_ARCH, "out_channels": int(model.meta["out_channels"]), "flops_per_pixel": fpp,
                     "receptive_field": model.net.receptive_field, "views": views, "modes": {}}
            for mode, seconds in modes.items():
                mps = megapixels / seconds
                passes = 1 if mode == "naive_full" else views
                entry["modes"][mode] = {"seconds": round(seconds, 3), "megapixels_per_s": round(mps, 4),
                                        "fraction_of_peak": round(passes * fpp * mps * 1e6 / peak, 4)}
                print(f"{task:8s} {mode:28s} {seconds:8.2f} s  {mps:8.3f} MP/s  "
                      f"{100 * passes * fpp * mps * 1e6 / peak:5.2f} % of peak", flush=True)
            if device.type == "cuda":
                rows = [network_only(model.net, device, 256, 64), network_only(model.net, device, 1024, 16)]
                if not args.skip_compile and task == "segment":
                    rows.append(network_only(model.net, device, 1024, 16, compile_it=True))
                for row in rows:
                    row["fraction_of_peak"] = round(fpp * row["megapixels_per_s"] * 1e6 / peak, 4)
                    print(f"{task:8s} network_only {row}", flush=True)
                entry["network_only"] = rows
            if args.profile:
                entry["profile_end_to_end"] = entry_profile
            run["models"][task] = entry
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(run, indent=2) + "\n")
        if not args.skip_memory:
            run["memory"] = peak_memory(make_model("segment"), tmp, args)
            print("memory", run["memory"], flush=True)
    path.write_text(json.dumps(run, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
