"""Self-supervised pretext methods behind one :class:`~napari_emssl.pretext.base.Pretext` contract.

* ``gan``: pix2pix restoration (Kazimi et al. 2024) for the CNN generators;
* ``mae``: masked autoencoder (He et al. 2022) for ViTs, input-masked image modelling for CNNs;
* ``mff``: MAE with multi-level feature fusion (Liu et al. 2023), ViTs only;
* ``mocov3``: momentum contrast v3 (Chen, Xie, He 2021) for ViTs and CNN encoders.

:func:`create_pretext` builds one; ``arch`` names the downstream architecture of the
registry whose weights the method pretrains.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import InputError
from ..models import list_models
from .base import Pretext

__all__ = ["PRETEXT_METHODS", "Pretext", "create_pretext", "default_arch", "supported_archs"]

PRETEXT_METHODS: tuple[str, ...] = ("gan", "mae", "mocov3", "mff")

_DEFAULT_ARCH = {"gan": "resunet_b3_rf96", "mae": "vit_tiny_p16", "mocov3": "vit_tiny_p16", "mff": "vit_tiny_p16"}

# registry families each method can pretrain
_FAMILIES = {
    "gan": ("resunet", "hrnet", "smp_unet"),
    "mae": ("vit", "resunet", "hrnet", "smp_unet"),
    "mocov3": ("vit", "resunet", "hrnet", "smp_unet"),
    "mff": ("vit",),
}


def _check_method(method: Any) -> str:
    if method not in PRETEXT_METHODS:
        raise InputError(f"unknown pretext method {method!r}; choose one of: {', '.join(PRETEXT_METHODS)}")
    return method


def default_arch(method: str) -> str:
    """The architecture ``method`` pretrains when none is given."""
    return _DEFAULT_ARCH[_check_method(method)]


def supported_archs(method: str) -> list[str]:
    """Registered architectures ``method`` can pretrain, sorted by name."""
    families = _FAMILIES[_check_method(method)]
    return [info.name for info in list_models() if info.family in families]


def _pretext_class(method: str, arch: str) -> type[Pretext]:
    from ._common import arch_family

    if method == "gan":
        from .gan import Pix2PixPretext

        return Pix2PixPretext
    if method == "mae":
        from .mae import MaskedCNN, ViTMAE

        return ViTMAE if arch_family(arch) == "vit" else MaskedCNN
    if method == "mff":
        from .mff import MFFPretext

        return MFFPretext
    from .mocov3 import MoCoV3Pretext

    return MoCoV3Pretext


def _accepted_options(cls: type[Pretext]) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is Pretext or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return sorted(names)


def create_pretext(method: str, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None, **options: Any) -> Pretext:
    """Build the pretext ``method`` for the downstream architecture ``arch`` (default: :func:`default_arch`).

    ``arch_kwargs`` are the architecture's registry options; ``options`` the method's own
    (see each class). Raises :class:`InputError` for an unknown method, an architecture the
    method cannot use, or an unknown option.
    """
    method = _check_method(method)
    arch = default_arch(method) if arch is None else arch
    allowed = supported_archs(method)
    if arch not in allowed:
        raise InputError(f"pretext {method!r} cannot use architecture {arch!r}; choose one of: {', '.join(allowed)}")
    cls = _pretext_class(method, arch)
    accepted = _accepted_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"pretext {method!r} with {arch!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted)}"
        )
    return cls(arch, arch_kwargs, **options)
