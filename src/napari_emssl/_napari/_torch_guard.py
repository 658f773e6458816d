"""Keep triton out of the napari process when there is no CUDA GPU.

With the CUDA build of torch on a machine without a GPU, importing torchvision (which timm
and segmentation-models-pytorch import) loads triton. Triton's bundled LLVM clashes with
the LLVM of Mesa's software OpenGL driver and the process dies with a segmentation fault
once napari's canvas exists (measured: napari 0.9 + torch 2.14 cu130 under Xvfb). Triton
only serves GPU kernels, so blocking it without a GPU loses nothing.

:func:`keep_triton_out` is the one place that does this. Each widget factory calls it
before importing the core, never at import time.
"""

from __future__ import annotations

import sys


def keep_triton_out() -> bool:
    """Block ``import triton`` when CUDA is unavailable; return whether it is blocked.

    ``sys.modules["triton"] = None`` makes any later ``import triton`` raise ImportError,
    which torch, torchvision, timm and smp all treat as "triton not installed". Returns
    False when a GPU is present or triton was already imported (too late to block).
    """
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    import torch

    if torch.cuda.is_available():
        return False
    sys.modules["triton"] = None
    return True
