"""Model registry: a name -> factory table filled by a decorator at import time.

Shaped like timm's ``_registry.py`` / ``_factory.py``: each architecture module decorates
its factory functions with :func:`register_model`; :func:`create_model` looks the name up,
checks the keyword arguments against the registered defaults, builds the network and
stamps it with ``arch_name`` and ``arch_kwargs`` so that a model directory can rebuild it.
The table is filled once, when :mod:`napari_emssl.models` is imported, and never changed.

A factory has the signature ``factory(in_channels, out_channels, **kwargs) -> nn.Module``;
it receives every registered default (overridden by the caller's values), must raise
:class:`~napari_emssl.errors.ModelFormatError` for bad values, and must return a module
with int attributes ``receptive_field`` and ``size_multiple``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ModelFormatError

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a registered architecture without building it.

    ``receptive_field`` and ``size_multiple`` hold for ``default_kwargs``.
    """

    name: str
    family: str
    description: str
    receptive_field: int
    size_multiple: int
    default_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    factory: Callable[..., Any]


_REGISTRY: dict[str, _Entry] = {}  # filled by decorators at import, read-only afterwards


def _jsonable(value: Any) -> Any:
    """Tuples become lists (recursively), so kwargs survive a JSON round trip unchanged."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def register_model(
    name: str,
    *,
    family: str,
    description: str,
    receptive_field: int,
    size_multiple: int,
    default_kwargs: dict | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``factory`` under ``name`` (names are unique)."""

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        defaults = _jsonable(dict(default_kwargs or {}))
        json.dumps(defaults)  # fail at import, not when a model directory is written
        info = ModelInfo(name, family, description, int(receptive_field), int(size_multiple), defaults)
        _REGISTRY[name] = _Entry(info, factory)
        return factory

    return decorate


def _entry(name: Any) -> _Entry:
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ModelFormatError(f"unknown model architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return entry


def list_models() -> list[ModelInfo]:
    """Every registered architecture, sorted by name."""
    return [model_info(name) for name in sorted(_REGISTRY)]


def model_info(name: str) -> ModelInfo:
    """Registry metadata of ``name`` (a fresh copy; :class:`ModelFormatError` if unknown)."""
    info = _entry(name).info
    return ModelInfo(
        info.name, info.family, info.description, info.receptive_field, info.size_multiple,
        json.loads(json.dumps(info.default_kwargs)),
    )


def _check_channels(label: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFormatError(f"{label} must be a positive integer, got {value!r}")
    return value


def create_model(name: str, in_channels: int = 1, out_channels: int = 1, **kwargs: Any):
    """Build the registered architecture ``name``.

    The returned ``torch.nn.Module`` maps ``B x in_channels x H x W`` float32 tensors to
    ``B x out_channels x H x W`` raw outputs (logits or values, no activation) when ``H`` and
    ``W`` are multiples of ``size_multiple``. It carries ``receptive_field``,
    ``size_multiple``, ``arch_name`` and ``arch_kwargs``; ``create_model(net.arch_name,
    in_channels, out_channels, **net.arch_kwargs)`` rebuilds the same architecture.
    """
    entry = _entry(name)
    in_channels = _check_channels("in_channels", in_channels)
    out_channels = _check_channels("out_channels", out_channels)
    defaults = entry.info.default_kwargs
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        accepted = ", ".join(sorted(defaults)) or "none"
        raise ModelFormatError(
            f"model {name!r} does not accept option(s) {', '.join(unknown)}; accepted: {accepted}"
        )
    merged = {**json.loads(json.dumps(defaults)), **_jsonable(kwargs)}
    try:
        json.dumps(merged)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"options of model {name!r} must be plain numbers, strings and lists: {exc}") from exc
    try:
        net = entry.factory(in_channels, out_channels, **merged)
    except ModelFormatError:
        raise
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"cannot build model {name!r} with options {merged}: {exc}") from exc
    for attr in ("receptive_field", "size_multiple"):
        if not isinstance(getattr(net, attr, None), int):
            raise TypeError(f"factory of {name!r} returned a module without an int {attr!r}")  # programming error
    net.arch_name = name
    net.arch_kwargs = merged
    return net
