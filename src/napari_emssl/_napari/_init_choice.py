"""Where the Fine-tune widget's network starts from: bundled, random, a model folder, or the Pretrain widget's result.

:class:`ChoosesInit` is a mixin for a widget with ``viewer``, ``init_combo``, ``init_folder``
and ``arch_combo``; it offers the folder of the last run of a Pretrain widget docked in the
same viewer as "pretrained: <folder>" and resolves the choice into ``(init, arch, arch_kwargs)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..engine.model_dir import META_NAME
from ..errors import InputError
from ._layers import docked_widgets

INITS = (("bundled pretrained weights", "bundled"), ("random weights", "random"), ("a model folder…", "folder"))
PRETRAINED = "pretrained"  # init choice: the folder of the Pretrain widget's last run


class ChoosesInit:
    """The starting-point choice of a fine-tuning widget (see the module docstring)."""

    def pretrained_dir(self) -> str | None:
        """The model folder of the last run of a Pretrain widget docked in this viewer, if any."""
        for widget in docked_widgets(self.viewer):
            folder = getattr(widget, "result_dir", None)
            if widget is not self and isinstance(folder, str) and folder:
                return folder
        return None

    def refresh_pretrained(self) -> None:
        """Offer (or update) "pretrained: <folder>" as a starting point; called when a pretraining ends."""
        folder = self.pretrained_dir()
        index = self.init_combo.findData(PRETRAINED)
        if folder is None:
            if index >= 0:
                self.init_combo.removeItem(index)
            return
        text = f"pretrained: {folder}"
        if index < 0:  # new: offered first and chosen (the natural next step after pretraining)
            self.init_combo.insertItem(0, text, PRETRAINED)
            self.init_combo.setItemData(0, folder, 3)  # 3 = ToolTipRole
            self.init_combo.setCurrentIndex(0)
        else:
            self.init_combo.setItemText(index, text)
            self.init_combo.setItemData(index, folder, 3)
        self._on_init_changed()

    def _on_init_changed(self, *_) -> None:
        init = self.init_combo.currentData()
        self.init_folder.setVisible(init == "folder")
        folder = self.pretrained_dir() if init == PRETRAINED else None
        if folder:  # show the network the pretrained weights are for (config() uses it anyway)
            arch, _ = _folder_arch(folder, self.arch_combo.currentText())
            if self.arch_combo.findText(arch) >= 0:
                self.arch_combo.setCurrentText(arch)

    def chosen_init(self) -> tuple[str, str, dict]:
        """``(init, arch, arch_kwargs)`` for the config; a folder's own architecture wins over the network combo."""
        init, arch, arch_kwargs = self.init_combo.currentData(), self.arch_combo.currentText(), {}
        if init == "folder":
            init = self.init_folder.path()
            if not init:
                raise InputError("Choose the model folder to start from, or start from the bundled or random weights.")
            arch, arch_kwargs = _folder_arch(init, arch)
        elif init == PRETRAINED:
            init = self.pretrained_dir()
            if not init:
                raise InputError("The pretrained model is no longer available (the Pretrain widget was closed); "
                                 "choose its folder with \"a model folder…\".")
            arch, arch_kwargs = _folder_arch(init, arch)
        return init, arch, arch_kwargs


def _folder_arch(folder: str, fallback: str) -> tuple[str, dict]:
    """Architecture and its settings of the model in ``folder`` (the core reports bad folders)."""
    try:
        meta = json.loads((Path(folder) / META_NAME).read_text())
        return str(meta["arch"]), dict(meta.get("arch_kwargs") or {})
    except (OSError, ValueError, KeyError, TypeError):
        return fallback, {}
