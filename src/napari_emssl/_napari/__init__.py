"""napari plugin: the only part of napari-emssl that imports napari and Qt.

The manifest (``napari.yaml``) points at the entries below. Each keeps triton out of the
process first (see :mod:`._torch_guard`) and only then imports its widget module, which
imports the core (torch).

napari finds the viewer parameter by inspecting ``__init__`` of what the manifest names
and then calls it, so the entries are classes whose ``__new__`` returns the real widget.
"""

from __future__ import annotations


def _build(kind: str, napari_viewer):
    from ._torch_guard import keep_triton_out

    keep_triton_out()
    if kind == "finetune":
        from ._finetune_widget import FinetuneWidget

        return FinetuneWidget(napari_viewer)
    if kind == "pretrain":
        from ._pretrain_widget import PretrainWidget

        return PretrainWidget(napari_viewer)
    from ._apply_widget import ApplyWidget

    return ApplyWidget(napari_viewer)


class PretrainWidgetEntry:
    """Manifest entry of the "Pretrain" widget; calling it returns a ``PretrainWidget``."""

    def __new__(cls, napari_viewer):
        return _build("pretrain", napari_viewer)

    def __init__(self, napari_viewer) -> None:  # pragma: no cover - only its signature is used (by napari)
        pass


class FinetuneWidgetEntry:
    """Manifest entry of the "Fine-tune" widget; calling it returns a ``FinetuneWidget``."""

    def __new__(cls, napari_viewer):
        return _build("finetune", napari_viewer)

    def __init__(self, napari_viewer) -> None:  # pragma: no cover - only its signature is used (by napari)
        pass


class ApplyWidgetEntry:
    """Manifest entry of the "Apply" widget; calling it returns an ``ApplyWidget``."""

    def __new__(cls, napari_viewer):
        return _build("apply", napari_viewer)

    def __init__(self, napari_viewer) -> None:  # pragma: no cover - only its signature is used (by napari)
        pass
